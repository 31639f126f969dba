//! The OS threads isles run on, and the spare threads kept to start the next isle.
//!
//! Creating and joining an OS thread costs about as much as creating a Lua VM, and a pool
//! that recycles its VMs pays that for each one. So when an isle's thread has served its isle
//! (the VM closed, everything this crate kept for it on the thread reset), the thread stays
//! for a while as a *spare*: the next isle with the same thread name and stack size starts on
//! it, without a thread being created and joined. A spare that no isle takes within
//! [`SPARE_IDLE`] ends; at most [`MAX_SPARES`] are kept, and a new one pushes out the one
//! that has waited longest.
//!
//! A spare shows the OS the name [`SPARE_NAME`] while it waits (so that it is not taken for
//! an isle's thread in `/proc` or a debugger), and takes its isle's name back when it serves
//! again. The name Rust sees (`std::thread::current().name()`) is the one it was started with,
//! which is why only isles with the same name reuse it.
//!
//! [`IsleThread`] stands for one isle's run on a thread. Joining it waits until the isle's
//! body has returned and the thread has let go of the isle: it has become a spare, or is
//! about to end. A thread whose body says it must not be reused (a panic escaped it, or its
//! isle had given up on it by the time it was done) ends instead.

use std::any::Any;
use std::ffi::{CStr, CString};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// How long a spare thread waits for another isle before it ends.
pub(crate) const SPARE_IDLE: Duration = Duration::from_secs(1);

/// How many spare threads are kept at most.
pub(crate) const MAX_SPARES: usize = 16;

/// The name a spare thread shows the OS while it waits.
pub(crate) const SPARE_NAME: &CStr = c"isle-spare";

/// What an isle runs on its thread, given what the thread prepared for it while it waited.
type Body = Box<dyn FnOnce(Prepared) -> AfterRun + Send>;

/// What a waiting thread made ahead of time for the next isle on it (a VM): the next isle's
/// body takes it if it can use it, and drops it otherwise.
pub(crate) type Prepared = Option<Box<dyn Any>>;

/// What an isle's thread does once the isle's body has returned.
pub(crate) enum AfterRun {
    /// It ends: it is not fit to serve another isle.
    End,
    /// It waits as a spare, first running the preparation, if any, for the next isle.
    Wait(Option<Box<dyn FnOnce() -> Prepared>>),
}

/// One isle's run, as handed to a thread.
struct Run {
    body: Body,
    /// Told (or dropped) once the thread has let go of the isle.
    ended: Sender<()>,
}

/// A waiting spare thread, as the list of spares holds it. Dropping it (a spare pushed out)
/// ends the thread.
struct Spare {
    name: String,
    stack_size: usize,
    /// Tells this spare apart from the others.
    serial: u64,
    /// The process it waits in: a child forked since then does not have its thread.
    pid: u32,
    runs: Sender<Run>,
}

/// The spares, the one that has waited longest first.
static SPARES: Mutex<Vec<Spare>> = Mutex::new(Vec::new());

fn spares() -> MutexGuard<'static, Vec<Spare>> {
    let mut spares = SPARES.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if spares.iter().any(|spare| spare.pid != pid) {
        // In a child forked since they offered themselves: only the thread that forked lives
        // on here, and a run handed to one of these would never start. They are forgotten
        // without touching their channels, whose other ends went with the parent's threads.
        for spare in std::mem::take(&mut *spares) {
            if spare.pid == pid {
                spares.push(spare);
            } else {
                std::mem::forget(spare);
            }
        }
    }
    spares
}

/// One isle's run on a thread, joined at most once; dropping it stops waiting for the run.
pub(crate) struct IsleThread(Option<Receiver<()>>);

impl IsleThread {
    /// Runs `body` on a spare thread named `name` with `stack_size` bytes of stack, or on a
    /// new one if there is none.
    ///
    /// `body` must not panic (the thread's owner would not learn of it): isles catch every
    /// panic on their thread and report it. It returns whether the thread is fit to serve
    /// another isle, and how to prepare for it.
    ///
    /// # Errors
    ///
    /// When a new thread is needed and the OS cannot start it, or `name` contains a NUL byte.
    pub(crate) fn spawn(
        name: String,
        stack_size: usize,
        body: impl FnOnce(Prepared) -> AfterRun + Send + 'static,
    ) -> io::Result<Self> {
        if name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a thread name must not contain a NUL byte",
            ));
        }
        let (ended, end) = crossbeam_channel::bounded(1);
        let run = Run {
            body: Box::new(body),
            ended,
        };
        let Err(run) = hand_to_spare(&name, stack_size, run) else {
            return Ok(IsleThread(Some(end)));
        };
        let thread = SpareThread {
            os_name: os_name(&name),
            name: name.clone(),
            stack_size,
        };
        thread::Builder::new()
            .name(name)
            .stack_size(stack_size)
            .spawn(move || thread.serve(run))?;
        Ok(IsleThread(Some(end)))
    }

    /// Waits up to `timeout` for the run to end. Returns whether it has (then any later call
    /// returns `true` at once).
    pub(crate) fn join_within(&mut self, timeout: Duration) -> bool {
        let Some(end) = &self.0 else {
            return true;
        };
        if let Err(RecvTimeoutError::Timeout) = end.recv_timeout(timeout) {
            return false;
        }
        self.0 = None;
        true
    }

    /// Waits for the run to end.
    ///
    /// # Blocking
    ///
    /// Until the isle's body has returned: only for a run known to end (its isle reported its
    /// end, or the caller accepts waiting for it as long as it runs).
    pub(crate) fn join(&mut self) {
        if let Some(end) = self.0.take() {
            let _ = end.recv();
        }
    }
}

impl std::fmt::Debug for IsleThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsleThread")
            .field("joined", &self.0.is_none())
            .finish()
    }
}

/// Hands `run` to the spare that waited least among those named `name` with `stack_size`
/// bytes of stack (its stack and caches are the warmest); gives `run` back if there is none.
fn hand_to_spare(name: &str, stack_size: usize, run: Run) -> Result<(), Run> {
    let mut spares = spares();
    let Some(at) = spares
        .iter()
        .rposition(|spare| spare.name == name && spare.stack_size == stack_size)
    else {
        return Err(run);
    };
    let spare = spares.remove(at);
    // Sent under the lock: a spare whose wait runs out meanwhile finds it (see `wait_for_run`).
    // The channel is empty (each one carries one run) and its thread waits on it.
    spare.runs.try_send(run).map_err(|err| err.into_inner())
}

/// A thread that serves isles one after the other.
struct SpareThread {
    name: String,
    stack_size: usize,
    /// `name` as the OS shows it; `None` where threads are not renamed.
    os_name: Option<CString>,
}

impl SpareThread {
    fn serve(self, first: Run) {
        static SERIALS: AtomicU64 = AtomicU64::new(1);
        let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
        let mut run = first;
        let mut prepared = None;
        loop {
            let Run { body, ended } = run;
            let AfterRun::Wait(prepare) = body(prepared.take()) else {
                return;
            };
            set_os_name(SPARE_NAME);
            let next = self.offer(serial);
            // The isle is let go of: whoever waits for it may go on, and may start the next
            // isle on this very thread.
            drop(ended);
            // Meanwhile (a run handed over waits for it: it is what that run needs).
            prepared = prepare.and_then(|prepare| catch_unwind(AssertUnwindSafe(prepare)).ok()?);
            run = match wait_for_run(&next, serial) {
                Some(run) => run,
                None => return,
            };
            if let Some(name) = &self.os_name {
                set_os_name(name);
            }
        }
    }

    /// Adds this thread to the spares, pushing out the one that waited longest if there are
    /// too many. Returns where its next run comes.
    fn offer(&self, serial: u64) -> Receiver<Run> {
        let (runs, next) = crossbeam_channel::bounded(1);
        let pushed_out = {
            let mut spares = spares();
            let pushed_out = (spares.len() >= MAX_SPARES).then(|| spares.remove(0));
            spares.push(Spare {
                name: self.name.clone(),
                stack_size: self.stack_size,
                serial,
                pid: std::process::id(),
                runs,
            });
            pushed_out
        };
        // Its thread sees the channel disconnect and ends.
        drop(pushed_out);
        next
    }
}

/// Waits for the next run of the spare `serial`; `None` when it is to end: no isle took it in
/// time, or it was pushed out.
fn wait_for_run(next: &Receiver<Run>, serial: u64) -> Option<Run> {
    match next.recv_timeout(SPARE_IDLE) {
        Ok(run) => return Some(run),
        Err(RecvTimeoutError::Disconnected) => return None,
        Err(RecvTimeoutError::Timeout) => {}
    }
    #[cfg(test)]
    crate::core::pause::at(crate::core::pause::Window::SpareExpiring);
    let mut spares = spares();
    // A run handed over since the wait ran out was sent under this lock: it is here now.
    if let Ok(run) = next.try_recv() {
        return Some(run);
    }
    spares.retain(|spare| spare.serial != serial);
    None
}

/// `name` as the OS keeps it: at most 15 bytes (Linux's limit, as the standard library cuts
/// it), for giving a spare its name back.
#[cfg(target_os = "linux")]
fn os_name(name: &str) -> Option<CString> {
    let bytes = &name.as_bytes()[..name.len().min(15)];
    CString::new(bytes).ok()
}

#[cfg(not(target_os = "linux"))]
fn os_name(_name: &str) -> Option<CString> {
    None
}

/// Shows the OS `name` (at most 15 bytes) for the calling thread, where threads are renamed.
#[cfg(target_os = "linux")]
fn set_os_name(name: &CStr) {
    // SAFETY: `name` is a NUL-terminated string of at most 15 bytes plus the NUL, which
    // `pthread_setname_np` copies; `pthread_self` names the calling thread.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
}

#[cfg(not(target_os = "linux"))]
fn set_os_name(_name: &CStr) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread::ThreadId;

    const HANG: Duration = Duration::from_secs(20);

    /// What a body returns: the thread waits as a spare (preparing nothing), or ends.
    fn after(reusable: bool) -> AfterRun {
        match reusable {
            true => AfterRun::Wait(None),
            false => AfterRun::End,
        }
    }

    /// Taken by each test here: one of them fills the list of spares, which would push out
    /// the spares the others look for.
    fn alone() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a body on a thread named `name` that reports its id, and waits for the run.
    fn run_on(name: &str, stack_size: usize, reusable: bool) -> ThreadId {
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn(name.to_owned(), stack_size, move |_| {
            tx.send(thread::current().id()).unwrap();
            after(reusable)
        })
        .unwrap();
        thread.join();
        rx.recv_timeout(HANG).unwrap()
    }

    fn is_spare(name: &str) -> bool {
        spares().iter().any(|spare| spare.name == name)
    }

    /// The OS name of the thread with Rust name `name`, if it is a spare.
    #[cfg(target_os = "linux")]
    fn os_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    #[test]
    fn the_next_run_with_the_same_name_and_stack_takes_the_spare() {
        let _alone = alone();
        let first = run_on("it-same", 1 << 20, true);
        assert!(is_spare("it-same"));
        let second = run_on("it-same", 1 << 20, true);
        assert_eq!(first, second);
    }

    #[test]
    fn another_name_or_stack_size_gets_a_thread_of_its_own() {
        let _alone = alone();
        let first = run_on("it-key-a", 1 << 20, true);
        assert_ne!(run_on("it-key-b", 1 << 20, true), first);
        assert_ne!(run_on("it-key-a", 2 << 20, true), first);
        assert_eq!(run_on("it-key-a", 1 << 20, true), first);
    }

    #[test]
    fn a_thread_whose_body_forbids_reuse_ends() {
        let _alone = alone();
        let first = run_on("it-unfit", 1 << 20, false);
        assert!(!is_spare("it-unfit"));
        assert_ne!(run_on("it-unfit", 1 << 20, true), first);
    }

    #[test]
    fn the_thread_keeps_its_rust_name_and_shows_the_os_whether_it_is_a_spare() {
        let _alone = alone();
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let mut thread = IsleThread::spawn("it-names".to_owned(), 1 << 20, move |_| {
            tx.send(thread::current().name().map(str::to_owned))
                .unwrap();
            released.recv().unwrap();
            after(true)
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(HANG).unwrap().as_deref(), Some("it-names"));
        #[cfg(target_os = "linux")]
        assert!(os_names().iter().any(|n| n == "it-names"));
        release.send(()).unwrap();
        thread.join();
        #[cfg(target_os = "linux")]
        assert!(!os_names().iter().any(|n| n == "it-names"));
        // Serving again: the isle's name is back.
        let (tx, rx) = mpsc::channel();
        let mut again = IsleThread::spawn("it-names".to_owned(), 1 << 20, move |_| {
            #[cfg(target_os = "linux")]
            tx.send(os_names().iter().any(|n| n == "it-names")).unwrap();
            #[cfg(not(target_os = "linux"))]
            tx.send(true).unwrap();
            after(true)
        })
        .unwrap();
        again.join();
        assert!(rx.recv_timeout(HANG).unwrap());
    }

    #[test]
    fn long_names_are_cut_as_the_os_keeps_them() {
        let _alone = alone();
        let name = "it-a-rather-long-thread-name";
        let (tx, rx) = mpsc::channel();
        let mut first = IsleThread::spawn(name.to_owned(), 1 << 20, |_| after(true)).unwrap();
        first.join();
        let mut second = IsleThread::spawn(name.to_owned(), 1 << 20, move |_| {
            #[cfg(target_os = "linux")]
            tx.send(os_names().iter().any(|n| n == "it-a-rather-lon"))
                .unwrap();
            #[cfg(not(target_os = "linux"))]
            tx.send(true).unwrap();
            after(true)
        })
        .unwrap();
        second.join();
        assert!(rx.recv_timeout(HANG).unwrap());
    }

    #[test]
    fn a_name_with_a_nul_byte_is_refused() {
        let _alone = alone();
        let err = IsleThread::spawn("it\0nul".to_owned(), 1 << 20, |_| after(true)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_run_still_going_is_not_joined_within_a_timeout_then_is() {
        let _alone = alone();
        let (release, released) = mpsc::channel::<()>();
        let mut thread = IsleThread::spawn("it-busy".to_owned(), 1 << 20, move |_| {
            let _ = released.recv();
            after(true)
        })
        .unwrap();
        assert!(!thread.join_within(Duration::from_millis(5)));
        assert!(!thread.join_within(Duration::ZERO));
        release.send(()).unwrap();
        assert!(thread.join_within(HANG));
        assert!(
            thread.join_within(Duration::ZERO),
            "joined once, then at once"
        );
        thread.join();
    }

    #[test]
    fn dropping_the_handle_leaves_the_run_going_to_its_end() {
        let _alone = alone();
        let (release, released) = mpsc::channel::<()>();
        let (ended, ends) = mpsc::channel::<()>();
        let thread = IsleThread::spawn("it-detached".to_owned(), 1 << 20, move |_| {
            let _ = released.recv();
            ended.send(()).unwrap();
            after(true)
        })
        .unwrap();
        drop(thread);
        release.send(()).unwrap();
        ends.recv_timeout(HANG).unwrap();
    }

    #[test]
    fn an_unused_spare_ends_after_its_idle_time() {
        let _alone = alone();
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn("it-idle".to_owned(), 1 << 20, move |_| {
            // Told when the thread, spare or not, ends.
            struct Ends(mpsc::Sender<()>);
            impl Drop for Ends {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            thread_local!(static ENDS: std::cell::RefCell<Option<Ends>> = const { std::cell::RefCell::new(None) });
            ENDS.set(Some(Ends(tx)));
            after(true)
        })
        .unwrap();
        thread.join();
        assert!(is_spare("it-idle"));
        rx.recv_timeout(SPARE_IDLE + HANG).unwrap();
        assert!(!is_spare("it-idle"));
    }

    #[test]
    fn a_spare_taken_as_its_wait_runs_out_serves_the_run() {
        let _alone = alone();
        let first = run_on("it-expiring", 1 << 20, true);
        // The spare stops where its wait has run out, before it withdraws.
        let paused =
            crate::core::pause::arm(crate::core::pause::Window::SpareExpiring, "it-expiring");
        paused.reached();
        // Taken meanwhile: handed the run under the lock the spare is about to take.
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn("it-expiring".to_owned(), 1 << 20, move |_| {
            tx.send(thread::current().id()).unwrap();
            after(true)
        })
        .unwrap();
        assert!(!is_spare("it-expiring"));
        paused.release();
        thread.join();
        assert_eq!(rx.recv_timeout(HANG).unwrap(), first);
    }

    #[test]
    fn a_spare_pushed_out_by_newer_ones_ends() {
        let _alone = alone();
        let (tx, rx) = mpsc::channel();
        let mut oldest = IsleThread::spawn("it-pushed".to_owned(), 1 << 20, move |_| {
            struct Ends(mpsc::Sender<()>);
            impl Drop for Ends {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            thread_local!(static ENDS: std::cell::RefCell<Option<Ends>> = const { std::cell::RefCell::new(None) });
            ENDS.set(Some(Ends(tx)));
            after(true)
        })
        .unwrap();
        oldest.join();
        // Enough newer spares to push it out (other tests' spares only help).
        let newer: Vec<_> = (0..MAX_SPARES)
            .map(|i| {
                let (release, released) = mpsc::channel::<()>();
                let thread = IsleThread::spawn(format!("it-newer-{i}"), 1 << 20, move |_| {
                    let _ = released.recv();
                    after(true)
                })
                .unwrap();
                (release, thread)
            })
            .collect();
        for (release, mut thread) in newer {
            release.send(()).unwrap();
            thread.join();
        }
        rx.recv_timeout(HANG).unwrap();
        assert!(!is_spare("it-pushed"));
    }

    #[test]
    fn a_spare_hands_what_it_prepared_to_the_next_run() {
        let _alone = alone();
        let mut first = IsleThread::spawn("it-prepared".to_owned(), 1 << 20, |_| {
            AfterRun::Wait(Some(Box::new(|| Some(Box::new(42_u32) as Box<dyn Any>))))
        })
        .unwrap();
        first.join();
        let (tx, rx) = mpsc::channel();
        let mut second = IsleThread::spawn("it-prepared".to_owned(), 1 << 20, move |prepared| {
            let value = prepared.and_then(|p| p.downcast::<u32>().ok()).map(|v| *v);
            tx.send(value).unwrap();
            after(true)
        })
        .unwrap();
        second.join();
        assert_eq!(rx.recv_timeout(HANG).unwrap(), Some(42));
        // Taken once: the run after gets nothing.
        let (tx, rx) = mpsc::channel();
        let mut third = IsleThread::spawn("it-prepared".to_owned(), 1 << 20, move |prepared| {
            tx.send(prepared.is_none()).unwrap();
            after(true)
        })
        .unwrap();
        third.join();
        assert!(rx.recv_timeout(HANG).unwrap());
    }

    #[test]
    fn a_preparation_that_panics_leaves_nothing_and_the_spare_serves_on() {
        let _alone = alone();
        let first = run_on("it-prep-panic", 1 << 20, true);
        let mut panicking = IsleThread::spawn("it-prep-panic".to_owned(), 1 << 20, |_| {
            AfterRun::Wait(Some(Box::new(|| panic!("preparation failed"))))
        })
        .unwrap();
        panicking.join();
        let (tx, rx) = mpsc::channel();
        let mut next = IsleThread::spawn("it-prep-panic".to_owned(), 1 << 20, move |prepared| {
            tx.send((thread::current().id(), prepared.is_none()))
                .unwrap();
            after(true)
        })
        .unwrap();
        next.join();
        assert_eq!(rx.recv_timeout(HANG).unwrap(), (first, true));
    }

    #[test]
    fn what_an_unused_spare_prepared_is_dropped_when_it_ends() {
        let _alone = alone();
        struct Dropped(mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn("it-prep-drop".to_owned(), 1 << 20, move |_| {
            AfterRun::Wait(Some(Box::new(move || {
                Some(Box::new(Dropped(tx)) as Box<dyn Any>)
            })))
        })
        .unwrap();
        thread.join();
        rx.recv_timeout(SPARE_IDLE + HANG).unwrap();
        assert!(!is_spare("it-prep-drop"));
    }
}
