//! Arming the hook on demand from a signal handler (Unix).
//!
//! The handler runs on the isle's thread and only reads atomics in `const` thread-locals (no
//! allocation, no lock) before calling `lua_sethook` on the coroutines recorded here: the
//! chain of coroutines being resumed from Lua (through the wrapped `coroutine` functions) and
//! those resumed from Rust (through mlua's thread event callback).

use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use mlua::Lua;

use super::hook::{self, Registration};
use super::{chain, Interrupter};

thread_local! {
    /// The interrupt signal of the isle on this thread; 0 when there is none.
    static SIGNAL: AtomicI32 = const { AtomicI32::new(0) };
}

/// Where an interrupt signal goes: one thread, one signal.
#[derive(Debug)]
pub(super) struct Target {
    thread: libc::pthread_t,
    signal: c_int,
}

// SAFETY: a `pthread_t` is an identifier that any thread may use to signal the thread it names.
// It stays valid because the Lua thread removes its `Target` (under the interrupter's lock, which
// every sender holds while signalling) before it exits.
unsafe impl Send for Target {}

impl Target {
    pub(super) fn send(&self) {
        // SAFETY: see the `Send` impl: the thread named by `thread` has not exited.
        unsafe { libc::pthread_kill(self.thread, self.signal) };
    }
}

/// The handler: arm every coroutine of the resume chain if the running request has to stop.
///
/// Async-signal-safe: it reads atomics in `const` thread-locals and calls `lua_sethook`. On a
/// thread with a permanent hook ([`Interrupt::Hook`](crate::Interrupt::Hook), reached by a
/// stray signal meant for another isle) it does nothing: that hook looks by itself.
fn on_signal() {
    #[cfg(test)]
    if DROP_ARMS.with(|d| d.load(Ordering::Relaxed)) > 0 {
        DROP_ARMS.with(|d| d.fetch_sub(1, Ordering::Relaxed));
        return;
    }
    if hook::on_demand() && hook::requested().is_some() {
        hook::arming(true);
        chain::arm_all();
        hook::arming(false);
        #[cfg(test)]
        hook::count_signal_arm();
    } else if hook::on_demand() && hook::preempt_due() {
        hook::arm_preempt();
        #[cfg(test)]
        hook::count_signal_arm();
    }
}

#[cfg(test)]
thread_local! {
    /// Test-only: how many interrupt signals this thread's handler is to ignore, as if their
    /// arm had been lost.
    static DROP_ARMS: std::sync::atomic::AtomicUsize =
        const { std::sync::atomic::AtomicUsize::new(0) };
}

/// Test-only: makes the handler on the calling thread ignore its next `n` signals.
#[cfg(test)]
pub(crate) fn drop_next_arms(n: usize) {
    DROP_ARMS.with(|d| d.store(n, Ordering::Relaxed));
}

/// Installs the process-wide handler for `signal` once.
fn ensure_handler(signal: c_int) -> mlua::Result<()> {
    static INSTALLED: Mutex<Vec<c_int>> = Mutex::new(Vec::new());
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if installed.contains(&signal) {
        return Ok(());
    }
    // SAFETY: `on_signal` is async-signal-safe: it reads atomics in `const` thread-locals
    // without destructors and calls `lua_sethook`, which Lua documents as callable from a
    // signal handler. signal-hook-registry chains to any handler installed before.
    unsafe { signal_hook_registry::register(signal, on_signal) }.map_err(|e| {
        mlua::Error::runtime(format!("cannot install a handler for signal {signal}: {e}"))
    })?;
    run_on_alternate_stack(signal);
    installed.push(signal);
    Ok(())
}

/// Adds `SA_ONSTACK` to the handler installed for `signal`, so that it runs on the alternate
/// signal stack of a thread that has one. Runtimes with small stacks of their own (Go's
/// goroutines, for example) require it of every handler for a signal they also use, and
/// `SIGURG` is Go's preemption signal.
fn run_on_alternate_stack(signal: c_int) {
    // SAFETY: `sigaction` reads the installed action into `action` (zeroed, then filled) and
    // installs it again with one more flag: the same handler, mask and other flags. Called
    // right after signal-hook-registry installed its handler, under our lock; code outside
    // this crate that changes the same signal's action at this very moment could have its
    // change overwritten, which is why this happens once per signal and process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, ptr::null(), &mut action) == 0
            && action.sa_flags & libc::SA_ONSTACK == 0
        {
            action.sa_flags |= libc::SA_ONSTACK;
            libc::sigaction(signal, &action, ptr::null_mut());
        }
    }
}

/// Changes whether `signal` is blocked on the calling thread; returns the previous mask.
fn set_blocked(signal: c_int, how: c_int) -> libc::sigset_t {
    // SAFETY: the sets are initialised by `sigemptyset` before use; `pthread_sigmask` only
    // changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(how, &set, &mut old);
        old
    }
}

/// See [`crate::without_interrupts`].
pub(super) fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let signal = SIGNAL.with(|s| s.load(Ordering::Relaxed));
    if signal == 0 {
        return f();
    }
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the mask saved below on the same thread; a pending signal is
            // delivered now.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, ptr::null_mut()) };
        }
    }
    let _restore = Restore(set_blocked(signal, libc::SIG_BLOCK));
    f()
}

/// The signal machinery of one VM.
pub(super) struct Installed {
    interrupter: Arc<Interrupter>,
    signal: c_int,
    /// Whether the thread blocked `signal` before `install` unblocked it: blocked again when
    /// the VM goes, so that the next isle on the thread finds the mask as it was.
    was_blocked: bool,
}

impl Installed {
    pub(super) fn install(
        _lua: &Lua,
        interrupter: &Arc<Interrupter>,
        _hook: &Registration,
        signal: c_int,
    ) -> mlua::Result<Self> {
        ensure_handler(signal)?;
        SIGNAL.with(|s| s.store(signal, Ordering::Relaxed));
        // Only now may signals come: everything the handler reads is in place.
        // SAFETY: `pthread_self` names the calling thread.
        let thread = unsafe { libc::pthread_self() };
        *interrupter
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Target { thread, signal });
        // Threads inherit their creator's mask; make sure the signal can reach this one.
        let before = set_blocked(signal, libc::SIG_UNBLOCK);
        // SAFETY: `before` was filled in by `pthread_sigmask`.
        let was_blocked = unsafe { libc::sigismember(&before, signal) } == 1;
        Ok(Installed {
            interrupter: interrupter.clone(),
            signal,
            was_blocked,
        })
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // No signal may target this thread from now on.
        *self
            .interrupter
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        SIGNAL.with(|s| s.store(0, Ordering::Relaxed));
        if self.was_blocked {
            set_blocked(self.signal, libc::SIG_BLOCK);
        }
    }
}
