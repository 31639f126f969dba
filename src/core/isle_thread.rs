//! The OS thread an isle's VM lives on, as its owner joins it.
//!
//! A shutdown must not return before the thread has ended, and must never block for good on a
//! thread that was given up on (stuck in code that cannot be interrupted). The safe way is to
//! wait for the thread to report its end, then join it; but that costs the waiter two more
//! sleeps and wake-ups than a plain join (woken by the report, asleep again in the join until
//! the thread has really gone), about a tenth of what starting and stopping a whole isle costs.
//! Where the C library can join with a timeout, [`IsleThread::join_within`] joins at once and
//! gives up after a short while, leaving the long waits to the report.
//!
//! The thread's closure catches its own panics (see [`IsleThread::spawn`]): the thread always
//! ends normally, and a panic is reported with its end.

use std::io;
use std::thread;
use std::time::Duration;

#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
use portable::Joinable;
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
use timed::Joinable;

/// An isle's thread, joined at most once; dropping it detaches the thread.
pub(crate) struct IsleThread(Joinable);

impl IsleThread {
    /// Starts `body` on a new thread built by `builder`.
    ///
    /// `body` must not panic (the thread's owner would not learn of it): isles catch every
    /// panic on their thread and report it.
    pub(crate) fn spawn(
        builder: thread::Builder,
        body: impl FnOnce() + Send + 'static,
    ) -> io::Result<Self> {
        Ok(IsleThread(Joinable::new(builder.spawn(body)?)))
    }

    /// Joins the thread if it ends within `timeout`. Returns whether it was joined (then any
    /// later call returns `true` at once). Where the C library has no timed join, looks only
    /// whether the thread has ended already.
    pub(crate) fn join_within(&mut self, timeout: Duration) -> bool {
        self.0.join_within(timeout)
    }

    /// Joins the thread, blocking until it has ended.
    ///
    /// # Blocking
    ///
    /// Until the thread ends: only for a thread known to end (it reported its end, or the
    /// caller accepts waiting for it as long as it runs).
    pub(crate) fn join(&mut self) {
        self.0.join();
    }
}

impl std::fmt::Debug for IsleThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsleThread").finish_non_exhaustive()
    }
}

/// Joining through the C library, which can wait with a timeout.
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
mod timed {
    use std::os::unix::thread::JoinHandleExt;
    use std::thread::JoinHandle;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// The raw thread, `None` once joined or detached.
    pub(super) struct Joinable(Option<libc::pthread_t>);

    // SAFETY: a `pthread_t` only names a thread (musl's is a pointer, hence no auto trait):
    // any thread may join or detach it, and every use takes `&mut self`.
    unsafe impl Send for Joinable {}
    // SAFETY: as for `Send`; a shared reference gives no access to the thread at all.
    unsafe impl Sync for Joinable {}

    impl Joinable {
        pub(super) fn new(handle: JoinHandle<()>) -> Self {
            // From here on this value owns the joinable thread: it joins or detaches it.
            // (std's `RawPthread` is an integer on every target; `pthread_t` a pointer on musl.)
            #[allow(clippy::unnecessary_cast)]
            let raw = handle.into_pthread_t() as libc::pthread_t;
            Joinable(Some(raw))
        }

        pub(super) fn join_within(&mut self, timeout: Duration) -> bool {
            let Some(raw) = self.0 else {
                return true;
            };
            let Some(deadline) = realtime_after(timeout) else {
                return false;
            };
            // SAFETY: `raw` is a joinable thread this value owns, not joined or detached yet
            // (both take it out of `self.0`); it is not the calling thread (an isle's own
            // thread never waits for its own isle: such waits fail before). On any result but
            // 0 the thread was not joined and stays joinable.
            let joined =
                unsafe { libc::pthread_timedjoin_np(raw, std::ptr::null_mut(), &deadline) } == 0;
            if joined {
                self.0 = None;
            }
            joined
        }

        pub(super) fn join(&mut self) {
            if let Some(raw) = self.0.take() {
                // SAFETY: as in `join_within`; taken out of `self.0` first, so joined once.
                if unsafe { libc::pthread_join(raw, std::ptr::null_mut()) } != 0 {
                    // Not joined (it cannot fail for a joinable thread that is not the
                    // caller): let the thread free its resources when it ends.
                    // SAFETY: still joinable, and no longer in `self.0`.
                    unsafe { libc::pthread_detach(raw) };
                }
            }
        }
    }

    impl Drop for Joinable {
        fn drop(&mut self) {
            if let Some(raw) = self.0.take() {
                // SAFETY: a joinable thread this value owns, never joined or detached before
                // (taken out of `self.0`): detaching lets it free its resources when it ends,
                // as dropping a `JoinHandle` does.
                unsafe { libc::pthread_detach(raw) };
            }
        }
    }

    /// `CLOCK_REALTIME` now plus `timeout`, as `pthread_timedjoin_np` takes its deadline.
    fn realtime_after(timeout: Duration) -> Option<libc::timespec> {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .checked_add(timeout)?;
        // `c_long` has 32 bits on some targets: the nanoseconds (below 10^9) fit all the same.
        #[allow(clippy::unnecessary_fallible_conversions)]
        let nanos = at.subsec_nanos().try_into().ok()?;
        Some(libc::timespec {
            tv_sec: at.as_secs().try_into().ok()?,
            tv_nsec: nanos,
        })
    }
}

/// Joining through the standard library, which cannot wait with a timeout.
#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
mod portable {
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// The thread, `None` once joined (dropping a `JoinHandle` detaches the thread).
    pub(super) struct Joinable(Option<JoinHandle<()>>);

    impl Joinable {
        pub(super) fn new(handle: JoinHandle<()>) -> Self {
            Joinable(Some(handle))
        }

        pub(super) fn join_within(&mut self, _timeout: Duration) -> bool {
            match &self.0 {
                None => true,
                Some(handle) if handle.is_finished() => {
                    self.join();
                    true
                }
                Some(_) => false,
            }
        }

        pub(super) fn join(&mut self) {
            if let Some(handle) = self.0.take() {
                // The body catches its panics (see `IsleThread::spawn`).
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn spawn(body: impl FnOnce() + Send + 'static) -> IsleThread {
        IsleThread::spawn(thread::Builder::new(), body).unwrap()
    }

    #[test]
    fn a_thread_that_ends_in_time_is_joined() {
        let (tx, rx) = mpsc::channel();
        let mut thread = spawn(move || tx.send(()).unwrap());
        rx.recv().unwrap();
        // Generous: the thread has only to return.
        assert!(thread.join_within(Duration::from_secs(20)));
        assert!(
            thread.join_within(Duration::ZERO),
            "joined once, then at once"
        );
        thread.join();
    }

    #[test]
    fn a_thread_still_running_is_left_joinable_then_joined() {
        let (release, released) = mpsc::channel::<()>();
        let mut thread = spawn(move || {
            let _ = released.recv();
        });
        assert!(!thread.join_within(Duration::from_millis(5)));
        assert!(!thread.join_within(Duration::ZERO));
        release.send(()).unwrap();
        thread.join();
        assert!(thread.join_within(Duration::ZERO));
    }

    #[test]
    fn dropping_detaches_a_running_thread_which_still_ends() {
        let (release, released) = mpsc::channel::<()>();
        let (ended, ends) = mpsc::channel::<()>();
        let thread = spawn(move || {
            let _ = released.recv();
            ended.send(()).unwrap();
        });
        drop(thread);
        release.send(()).unwrap();
        ends.recv_timeout(Duration::from_secs(20)).unwrap();
    }
}
