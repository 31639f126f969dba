//! Interrupting Luau, which has no debug hooks: its VM-wide interrupt callback instead.
//!
//! Luau calls `lua_callbacks(L)->interrupt`, when set, at its safepoints (function calls and
//! loop back-edges) in every coroutine of the VM, and documents that the field may be set from
//! any thread. So with [`Interrupt::OnDemand`](crate::Interrupt::OnDemand) nothing is installed
//! while idle: a cancel or an expired deadline stores the callback from the thread that
//! noticed it, and the callback raises the interrupt error at every safepoint until the
//! request has unwound, then removes itself. With [`Interrupt::Hook`](crate::Interrupt::Hook)
//! the callback stays installed and also checks the request's deadline.
//!
//! The callback never runs for the garbage collector's own safepoints (`gc >= 0`), where Luau
//! does not allow an error.

use std::cell::Cell;
use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use mlua::{ffi, Lua};

use super::{Interrupter, Stop};

thread_local! {
    /// The interrupter of the isle whose VM runs on this thread; null when there is none.
    static ACTIVE: AtomicPtr<Interrupter> = const { AtomicPtr::new(ptr::null_mut()) };
    /// Whether the callback stays installed for good (`Interrupt::Hook`).
    static PERMANENT: AtomicBool = const { AtomicBool::new(false) };
    /// The running request's deadline, checked by a permanent callback.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Safepoints left before a permanent callback looks at the clock again.
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
    /// The permanent callback's clock interval, in safepoints.
    static EVERY: Cell<u32> = const { Cell::new(1) };
}

/// Whether an interrupt made a coroutine yield since the last call. Luau's interrupt always
/// raises an error instead, so never.
#[cfg(feature = "tokio")]
pub(crate) fn take_yielded() -> bool {
    false
}

/// Why the request running on this thread has to stop, if it has to.
pub(super) fn pending() -> Option<Stop> {
    let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
    if interrupter.is_null() {
        return None;
    }
    // SAFETY: the pointer is non-null only while the `Registration` that set it is alive on
    // this thread, and that registration owns an `Arc` keeping the interrupter alive.
    let interrupter = unsafe { &*interrupter };
    interrupter.stop_requested()
}

/// Whether the function running in `state` is the task library's.
///
/// # Safety
///
/// `state` is the running coroutine.
unsafe fn in_library(state: *mut ffi::lua_State) -> bool {
    if !super::preempt::library_installed() {
        return false;
    }
    // SAFETY: guaranteed by the caller; `ar` is ours to fill.
    unsafe {
        let mut ar: ffi::lua_Debug = std::mem::zeroed();
        ffi::lua_getinfo(state, 0, c"s".as_ptr(), &mut ar) != 0
            && super::preempt::is_library(ar.source)
    }
}

/// Whether the running task has used up its time slice.
fn preempt_due() -> bool {
    let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
    // SAFETY: as in `pending`.
    unsafe { interrupter.as_ref() }.is_some_and(|i| i.slices.is_due())
}

/// A permanent callback's deadline check, every `EVERY` safepoints.
fn deadline_passed() -> bool {
    let left = COUNTDOWN.get();
    if left > 0 {
        COUNTDOWN.set(left - 1);
        return false;
    }
    COUNTDOWN.set(EVERY.get());
    DEADLINE
        .get()
        .is_some_and(|deadline| Instant::now() >= deadline)
}

type InterruptFn = unsafe extern "C-unwind" fn(*mut ffi::lua_State, c_int);

/// Stores `callback` as the VM's interrupt callback.
///
/// # Safety
///
/// `callbacks` must be the callbacks of a live Luau VM. Luau documents the interrupt field as
/// safe to set from any thread; the store is one aligned pointer write.
unsafe fn set_interrupt(callbacks: *mut ffi::lua_Callbacks, callback: Option<InterruptFn>) {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr::write_volatile(ptr::addr_of_mut!((*callbacks).interrupt), callback) };
}

/// The interrupt callback: raises the interrupt error while one is pending.
unsafe extern "C-unwind" fn interrupt(state: *mut ffi::lua_State, gc: c_int) {
    if gc >= 0 {
        return;
    }
    let permanent = PERMANENT.with(|p| p.load(Ordering::Relaxed));
    let stop = match pending() {
        // The task scheduler's own code stops at its safe points (see the hook elsewhere).
        // SAFETY: `state` is the running coroutine at a safepoint; `lua_getinfo` fills `ar`.
        Some(_) if unsafe { in_library(state) } => return,
        Some(stop) => stop,
        None if permanent && deadline_passed() => Stop::Timeout,
        None if preempt_due() => {
            let target = super::preempt::target();
            // SAFETY: `state` is the running coroutine at a safepoint; Luau lets an interrupt
            // callback yield where the coroutine can (mlua's own interrupt does the same).
            unsafe {
                if target == state && !in_library(state) && ffi::lua_isyieldable(state) != 0 {
                    if let Some(interrupter) = ACTIVE.with(|a| a.load(Ordering::Acquire)).as_ref() {
                        interrupter.slices.clear_due();
                    }
                    if !permanent {
                        set_interrupt(ffi::lua_callbacks(state), None);
                        std::sync::atomic::fence(Ordering::SeqCst);
                        if pending().is_some() {
                            set_interrupt(ffi::lua_callbacks(state), Some(interrupt));
                        }
                    }
                    ffi::lua_yield(state, 0);
                }
            }
            // Elsewhere (a coroutine the task resumed, or where it cannot yield) the callback
            // stays installed and looks again at the next safepoint.
            return;
        }
        None => {
            if !permanent {
                // Left over from an interrupt that came as its request ended: remove it.
                // SAFETY: `state` belongs to the VM whose callbacks these are.
                unsafe { set_interrupt(ffi::lua_callbacks(state), None) };
                // A cancel that stored the callback since `pending` looked was just undone:
                // look again. The fence orders the removal before the look (the canceller
                // raises the generation before it stores the callback): either the canceller's
                // store comes after the removal, or this look sees the raised generation.
                std::sync::atomic::fence(Ordering::SeqCst);
                if pending().is_some() || preempt_due() {
                    // SAFETY: as above.
                    unsafe { set_interrupt(ffi::lua_callbacks(state), Some(interrupt)) };
                }
            }
            return;
        }
    };
    // SAFETY: `state` is the running coroutine, handed to us by Luau at a safepoint where it
    // allows errors; `lua_error` unwinds with no Rust value with a destructor alive here.
    unsafe {
        super::stop_error::push(state, stop);
        ffi::lua_error(state)
    }
}

/// Where an on-demand interrupt is delivered: the VM's callbacks, settable from any thread.
#[derive(Debug)]
pub(super) struct Target {
    callbacks: *mut ffi::lua_Callbacks,
}

// SAFETY: the callbacks live as long as the VM, and the Lua thread removes its `Target` (under
// the interrupter's lock, which every sender holds while delivering) before the VM closes.
unsafe impl Send for Target {}

impl Target {
    pub(super) fn send(&self) {
        // SAFETY: see the `Send` impl.
        unsafe { set_interrupt(self.callbacks, Some(interrupt)) };
    }
}

/// This thread's registration as the home of one VM; clears it when dropped.
pub(super) struct Registration {
    callbacks: *mut ffi::lua_Callbacks,
    permanent: bool,
    interrupter: Arc<Interrupter>,
}

impl Registration {
    /// Registers `interrupter` for this thread: with `every`, installs the permanent callback
    /// (checking the clock every `every` safepoints), otherwise lets cancels deliver it.
    pub(super) fn install(
        lua: &Lua,
        interrupter: &Arc<Interrupter>,
        every: Option<u32>,
    ) -> mlua::Result<Self> {
        let mut callbacks = ptr::null_mut();
        // SAFETY: `exec_raw` calls the closure with the VM's main state inside a protected
        // call; `lua_callbacks` only returns a pointer into the global state.
        unsafe {
            lua.exec_raw::<()>((), |state| callbacks = ffi::lua_callbacks(state))?;
        }
        let permanent = every.is_some();
        EVERY.set(every.unwrap_or(1).max(1));
        COUNTDOWN.set(0);
        PERMANENT.with(|p| p.store(permanent, Ordering::Relaxed));
        super::stop_error::install(lua)?;
        ACTIVE.with(|a| a.store(Arc::as_ptr(interrupter).cast_mut(), Ordering::Release));
        if permanent {
            // SAFETY: `callbacks` belongs to `lua`, alive here.
            unsafe { set_interrupt(callbacks, Some(interrupt)) };
        } else {
            *interrupter
                .target
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Target { callbacks });
        }
        Ok(Registration {
            callbacks,
            permanent,
            interrupter: interrupter.clone(),
        })
    }

    pub(super) fn set_deadline(&self, deadline: Option<Instant>) {
        if self.permanent {
            DEADLINE.set(deadline);
            COUNTDOWN.set(0);
        }
    }

    /// Nothing to do: scripts cannot remove Luau's interrupt callback.
    pub(super) fn reinstall_permanent(&self) {}

    /// Delivers the interrupt (outside the canceller's thread: at the start of a request).
    pub(super) fn arm_base(&self) {
        // SAFETY: the VM outlives the registration (the worker drops the registration first).
        unsafe { set_interrupt(self.callbacks, Some(interrupt)) };
    }

    /// After a request: removes an on-demand callback.
    pub(super) fn disarm_base_if_touched(&self) {
        if !self.permanent {
            // SAFETY: as in `arm_base`.
            unsafe { set_interrupt(self.callbacks, None) };
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        super::stop_error::uninstall();
        // No cancel may reach the VM from now on.
        *self
            .interrupter
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        // SAFETY: as in `arm_base`.
        unsafe { set_interrupt(self.callbacks, None) };
        ACTIVE.with(|a| a.store(ptr::null_mut(), Ordering::Release));
        PERMANENT.with(|p| p.store(false, Ordering::Relaxed));
        DEADLINE.set(None);
    }
}
