//! Preempting the `task` library's tasks with the on-demand arm a stop uses.
//!
//! The scheduler tells which coroutine is the running task's own ([`slice_begin`],
//! [`slice_end`]); a watcher thread that sees a task run a whole time slice marks the slice
//! *due* and delivers the interrupt as a cancel would (a signal arming the hook on that
//! coroutine; Luau's interrupt callback). The hook, finding no stop pending but a due slice on
//! the task's own coroutine at a point where it can yield, yields it with no values: the
//! scheduler sees a task that yielded without blocking and queues it behind its siblings.
//! Nothing is installed while no slice is due.
//!
//! Only Lua 5.3 to 5.5 and Luau can tell whether a coroutine can yield where the hook fires;
//! elsewhere tasks are not preempted.

use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};

use mlua::ffi;

use super::Interrupter;

thread_local! {
    /// The running task's own coroutine; null when no task runs. Read by the signal handler.
    static TARGET: AtomicPtr<ffi::lua_State> = const { AtomicPtr::new(ptr::null_mut()) };
    /// Whether the VM on this thread has the task library (whose code the interrupt spares).
    static LIBRARY: AtomicBool = const { AtomicBool::new(false) };
}

/// Marks the VM on this thread as having the task library (or not, when it goes away).
pub(crate) fn set_library_installed(installed: bool) {
    LIBRARY.with(|l| l.store(installed, Ordering::SeqCst));
}

/// Whether the VM on this thread has the task library. Async-signal-safe.
pub(super) fn library_installed() -> bool {
    LIBRARY.with(|l| l.load(Ordering::SeqCst))
}

/// The preemption state of one isle, shared with the watcher thread.
#[derive(Debug, Default)]
pub(crate) struct Slices {
    /// Changes at every switch of the running task.
    epoch: AtomicU64,
    /// Whether a task runs now.
    in_task: AtomicBool,
    /// Set when the running task has used up its slice; cleared at the next switch.
    due: AtomicBool,
}

impl Slices {
    /// The switch counter and whether a task runs (for the watcher).
    pub(crate) fn observe(&self) -> (u64, bool) {
        (
            self.epoch.load(Ordering::SeqCst),
            self.in_task.load(Ordering::SeqCst),
        )
    }

    /// Whether the running task must yield. Async-signal-safe.
    pub(super) fn is_due(&self) -> bool {
        self.due.load(Ordering::SeqCst)
    }

    #[cfg_attr(
        not(any(
            feature = "lua53",
            feature = "lua54",
            feature = "lua55",
            feature = "luau"
        )),
        allow(dead_code)
    )]
    pub(super) fn clear_due(&self) {
        self.due.store(false, Ordering::SeqCst);
    }
}

impl Interrupter {
    /// The preemption state (for the watcher thread).
    pub(crate) fn slices(&self) -> &Slices {
        &self.slices
    }

    /// Preempts the running task if it is still the one seen at switch `epoch`. A switch in
    /// between can make the next task yield early, which only costs it a turn.
    ///
    /// Delivered once per slice: a task sitting in a host call is not signalled again and
    /// again (each signal may cut a blocking system call short) — unless `again`, for a task
    /// that has stayed due for long (a safety net; every known window re-arms by itself).
    pub(crate) fn preempt(&self, epoch: u64, again: bool) {
        let slices = &self.slices;
        if slices.epoch.load(Ordering::SeqCst) != epoch || !slices.in_task.load(Ordering::SeqCst) {
            return;
        }
        if !slices.due.swap(true, Ordering::SeqCst) || again {
            self.deliver();
        }
    }
}

/// The scheduler resumes the task whose coroutine is `task`.
///
/// # Safety
///
/// `task` must be a coroutine of the VM on this thread that stays alive until the next
/// [`slice_begin`]/[`slice_end`] or [`reset`] on this thread.
pub(crate) unsafe fn slice_begin(interrupter: &Interrupter, task: *mut ffi::lua_State) {
    switch(&interrupter.slices, task, true);
}

/// The task resumed last gave control back to `outer` (the task that started it, or null:
/// the request's own code).
///
/// # Safety
///
/// As [`slice_begin`] for a non-null `outer`.
pub(crate) unsafe fn slice_end(interrupter: &Interrupter, outer: *mut ffi::lua_State) {
    switch(&interrupter.slices, outer, !outer.is_null());
}

/// Records a switch of the running task (twice per switch, on the scheduler's hottest path).
///
/// Only the Lua thread writes `TARGET`, `epoch` and `in_task`, and it reads them back only
/// while interrupting itself (the signal handler, the hook, Luau's interrupt callback): plain
/// stores in program order (the compiler fence) are all it needs. The watcher thread only
/// compares what it sees a slice apart; a stale look makes one task yield a turn early or
/// late, never anything else.
fn switch(slices: &Slices, target: *mut ffi::lua_State, in_task: bool) {
    TARGET.with(|t| t.store(target, Ordering::Relaxed));
    let epoch = slices.epoch.load(Ordering::Relaxed).wrapping_add(1);
    slices.epoch.store(epoch, Ordering::Release);
    slices.due.store(false, Ordering::Release);
    slices.in_task.store(in_task, Ordering::Release);
    compiler_fence(Ordering::SeqCst);
}

/// No task runs any more (the request ended, however it ended).
pub(crate) fn reset(interrupter: &Interrupter) {
    // SAFETY: a null target.
    unsafe { slice_end(interrupter, ptr::null_mut()) };
}

/// The running task's own coroutine, or null. Async-signal-safe.
pub(super) fn target() -> *mut ffi::lua_State {
    TARGET.with(|t| t.load(Ordering::SeqCst))
}

/// The chunk name of the task library: a task is never preempted inside the scheduler's own
/// code (which must not be interrupted half-way through its bookkeeping).
pub(crate) const LIBRARY_CHUNK: &str = "=[isle task]";

/// Whether `source` (a `lua_Debug` source) names the task library's chunk.
///
/// # Safety
///
/// `source` is null or a NUL-terminated string.
pub(super) unsafe fn is_library(source: *const std::ffi::c_char) -> bool {
    // SAFETY: guaranteed by the caller.
    !source.is_null()
        && unsafe { std::ffi::CStr::from_ptr(source) }.to_bytes() == LIBRARY_CHUNK.as_bytes()
}
