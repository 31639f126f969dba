//! The interrupt hook and the per-thread state it reads.
//!
//! Everything here that a signal handler touches is an atomic in a `const`-initialised
//! thread-local without destructor, written on the Lua thread before any signal can target it.

use std::cell::Cell;
use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mlua::{ffi, Lua};

use super::{chain, Interrupter, Stop};

thread_local! {
    /// The interrupter of the isle whose VM runs on this thread; null when there is none.
    static ACTIVE: AtomicPtr<Interrupter> = const { AtomicPtr::new(ptr::null_mut()) };
    /// Whether a hook was armed or fired since the last request ended.
    static TOUCHED: AtomicBool = const { AtomicBool::new(false) };
    /// The idle interval of a permanent count hook; 0 when hooks are only set on demand.
    static EVERY: AtomicI32 = const { AtomicI32::new(0) };
    /// The running request's deadline, checked by a permanent hook (never by a signal handler).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether the hook made a coroutine yield since [`take_yielded`] was last called.
    static YIELDED: Cell<bool> = const { Cell::new(false) };
    /// Set while the hook must raise even where it could yield (see [`raising`]).
    static RAISE_ONLY: Cell<bool> = const { Cell::new(false) };
    /// Whether the hook was armed where none was set since the hook last looked at its
    /// fields (see [`must_set`]).
    static REARMED: AtomicBool = const { AtomicBool::new(false) };
    /// Whether the hook raised while `RAISE_ONLY` was set.
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the hook raising its error wherever it fires, even in a coroutine that could
/// yield (a coroutine being unwound or closed must not be left suspended by the hook). Returns
/// whether the hook raised meanwhile.
#[cfg(feature = "tokio")]
pub(super) fn raising(f: impl FnOnce()) -> bool {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RAISE_ONLY.set(self.0);
        }
    }
    let _restore = Restore(RAISE_ONLY.replace(true));
    RAISED.set(false);
    f();
    RAISED.replace(false)
}

/// Whether an interrupt made a coroutine yield since the last call; clears the flag.
#[cfg(feature = "tokio")]
pub(crate) fn take_yielded() -> bool {
    YIELDED.replace(false)
}

/// Why the request running on this thread has to stop, if it has to: a stop requested from
/// outside, or (with a permanent hook) a deadline passed on the clock.
///
/// Not for a signal handler: see [`requested`].
pub(super) fn pending() -> Option<Stop> {
    if let Some(stop) = requested() {
        return Some(stop);
    }
    if every() == 0 {
        return None;
    }
    let deadline = DEADLINE.get()?;
    (Instant::now() >= deadline).then_some(Stop::Timeout)
}

/// Why the request running on this thread has to stop, if a stop was requested from outside.
///
/// Async-signal-safe: reads atomics in `const` thread-locals only.
pub(super) fn requested() -> Option<Stop> {
    let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
    if interrupter.is_null() {
        return None;
    }
    // SAFETY: the pointer is non-null only while the `Registration` that set it is alive on
    // this thread, and that registration owns an `Arc` keeping the interrupter alive.
    let interrupter = unsafe { &*interrupter };
    interrupter.stop_requested()
}

/// Whether the running task has used up its time slice. Async-signal-safe.
pub(super) fn preempt_due() -> bool {
    let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
    // SAFETY: as in `requested`.
    unsafe { interrupter.as_ref() }.is_some_and(|i| i.slices.is_due())
}

/// Arms the hook on the running task's own coroutine, if a task runs (from the signal
/// handler, for a due slice). Async-signal-safe.
pub(super) fn arm_preempt() {
    let target = super::preempt::target();
    if !target.is_null() {
        // SAFETY: the target is a live coroutine of this thread's VM while it is set (see
        // `preempt::slice_begin`); `lua_sethook` only stores its hook fields.
        unsafe { arm(target) };
    }
}

/// With a slice due: yields `state` if it is the running task's own coroutine and can yield
/// here (returns `true`), or makes that coroutine look again soon. Returns `false` when the
/// hook has nothing to do for preemption.
///
/// # Safety
///
/// `state` is the running coroutine and `ar` the activation record the hook was given.
#[cfg_attr(
    not(any(feature = "lua53", feature = "lua54", feature = "lua55")),
    allow(unused_variables)
)]
unsafe fn preempt(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) -> bool {
    if !preempt_due() {
        return false;
    }
    let target = super::preempt::target();
    if target.is_null() {
        return false;
    }
    if target != state {
        // A coroutine the task resumed: the task yields once control is back in it.
        // SAFETY: as in `arm_preempt`; the task's coroutine waits in a resume.
        unsafe { keep_armed(target) };
        return false;
    }
    #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
    // SAFETY: `state` is the running coroutine; see the yield in `interrupt_hook`. `ar` is the
    // hook's record of the running function.
    unsafe {
        if !in_library(state, ar) && ffi::lua_isyieldable(state) != 0 {
            let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
            if let Some(interrupter) = interrupter.as_ref() {
                interrupter.slices.clear_due();
            }
            let every = every();
            if every == 0 {
                ffi::lua_sethook(state, None, 0, 0);
            } else {
                ffi::lua_sethook(state, Some(interrupt_hook), ffi::LUA_MASKCOUNT, every);
            }
            // A stop that came meanwhile re-arms (as in the `None` arm of the hook).
            if every == 0 && requested().is_some() {
                arm(state);
            }
            ffi::lua_yield(state, 0);
            return true;
        }
    }
    // Inside the scheduler's own code, a metamethod or a C call: look again a little later.
    // SAFETY: `state` is the running coroutine, inside the hook.
    unsafe { keep_firing(state, PREEMPT_RETRY) };
    true
}

/// Whether the function running in `state` (the hook's `ar`) is the task library's.
///
/// # Safety
///
/// `state` is the running coroutine and `ar` the activation record the hook was given.
unsafe fn in_library(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) -> bool {
    if !super::preempt::library_installed() {
        return false;
    }
    // SAFETY: guaranteed by the caller; `lua_getinfo` fills in `ar`.
    unsafe {
        ffi::lua_getinfo(state, c"S".as_ptr(), ar) != 0 && super::preempt::is_library((*ar).source)
    }
}

/// Instructions between two attempts to preempt a task that cannot yield where it is.
const PREEMPT_RETRY: c_int = 100;

/// Tells the isle of this thread that the signal handler begins (`true`) or ends arming the
/// hook. Async-signal-safe.
#[cfg(unix)]
pub(super) fn arming(begins: bool) {
    let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
    // SAFETY: as in `requested`.
    if let Some(interrupter) = unsafe { interrupter.as_ref() } {
        interrupter.arm_pace.arming(begins);
    }
}

/// Test-only: counts an arm made by the signal handler on the isle of this thread.
#[cfg(all(test, unix))]
pub(super) fn count_signal_arm() {
    let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
    // SAFETY: as in `requested`.
    if let Some(interrupter) = unsafe { interrupter.as_ref() } {
        interrupter
            .signal_arms
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Test-only: counts a firing of the hook that kept itself firing (a stop pending, or a task
/// that cannot yield yet), and whether it set itself again.
#[cfg(test)]
fn count_kept_firing(set_again: bool) {
    let interrupter = ACTIVE.with(|a| a.load(Ordering::Acquire));
    // SAFETY: as in `requested`.
    if let Some(interrupter) = unsafe { interrupter.as_ref() } {
        let counters = &interrupter.kept_firings;
        counters[0].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if set_again {
            counters[1].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Whether hooks are only set on demand (no permanent hook). Async-signal-safe.
pub(super) fn on_demand() -> bool {
    every() == 0
}

fn every() -> c_int {
    EVERY.with(|e| e.load(Ordering::Relaxed))
}

/// Makes `state` run the interrupt hook at its next instruction.
///
/// # Safety
///
/// `state` must be a live `lua_State` of the VM on this thread. May be called from a signal
/// handler on this thread: `lua_sethook` only stores the hook fields.
pub(super) unsafe fn arm(state: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller.
    unsafe { arm_after(state, 1) };
}

/// Makes `state` run the interrupt hook after `count` instructions (then at every one).
///
/// # Safety
///
/// As [`arm`].
pub(super) unsafe fn arm_after(state: *mut ffi::lua_State, count: c_int) {
    TOUCHED.with(|t| t.store(true, Ordering::Relaxed));
    // SAFETY: guaranteed by the caller; `lua_gethookmask` only reads the hook fields.
    unsafe {
        // Only an arm where Lua found no count nor line hook can race `luaG_traceexec` (see
        // `keep_firing`).
        if ffi::lua_gethookmask(state) & (ffi::LUA_MASKCOUNT | ffi::LUA_MASKLINE) == 0 {
            REARMED.with(|r| r.store(true, Ordering::Relaxed));
        }
        ffi::lua_sethook(state, Some(interrupt_hook), ffi::LUA_MASKCOUNT, count);
    }
}

/// Runs at every instruction of a coroutine it is armed on (and every `EVERY` instructions of
/// every coroutine when permanent).
unsafe extern "C-unwind" fn interrupt_hook(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    match pending() {
        // SAFETY: `state` is the running coroutine, handed to us by Lua.
        None if unsafe { preempt(state, ar) } => {}
        None => {
            let every = every();
            // SAFETY: `state` is the running coroutine, handed to us by Lua; `lua_sethook` and
            // `lua_gethookcount` only touch its hook fields.
            unsafe {
                if every == 0 {
                    #[cfg(test)]
                    crate::core::pause::at(crate::core::pause::Window::HookRemoval);
                    // Left over from an earlier interrupt: remove it.
                    ffi::lua_sethook(state, None, 0, 0);
                    // A signal handled since `pending` looked may have armed this very hook,
                    // which the removal just undid: look again (for a stop, and for a slice
                    // that came due).
                    if requested().is_some() {
                        arm(state);
                    } else if preempt_due() {
                        arm_preempt();
                    }
                } else if ffi::lua_gethookcount(state) != every {
                    ffi::lua_sethook(state, Some(interrupt_hook), ffi::LUA_MASKCOUNT, every);
                }
            }
        }
        // The task scheduler's own code is never cut half-way: its state is shared with later
        // requests. It stops at its own safe points (`stop_point`), or as soon as control is
        // in other code.
        // SAFETY: `state` and `ar` come from Lua; `lua_sethook` only stores the hook fields.
        Some(_) if unsafe { in_library(state, ar) } => unsafe { keep_firing(state, 1) },
        Some(stop) => {
            if !TOUCHED.with(|t| t.load(Ordering::Relaxed)) {
                // First sight of this interrupt (a permanent hook found it): reach the whole
                // resume chain, so each level stops as soon as control returns to it.
                chain::arm_all();
            }
            // SAFETY: `state` is the running coroutine. Firing at every instruction makes an
            // interrupted coroutine yield, or a caught error re-raise, at the next one. A count
            // hook may yield (with no values) since Lua 5.3; `lua_yield` then returns here and Lua
            // yields once the hook returns, with hooks re-enabled for the coroutine. Otherwise
            // `lua_error` unwinds with a longjmp; no Rust value with a destructor is alive in
            // this frame at that point.
            unsafe {
                keep_firing(state, 1);
                // Lua 5.1, 5.2 and LuaJIT cannot tell whether the coroutine may yield here:
                // they always raise.
                #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
                if !RAISE_ONLY.get() && ffi::lua_isyieldable(state) != 0 {
                    YIELDED.set(true);
                    ffi::lua_yield(state, 0);
                    return;
                }
                if RAISE_ONLY.get() {
                    RAISED.set(true);
                }
                super::stop_error::push(state, stop);
                ffi::lua_error(state)
            }
        }
    }
}

/// Keeps the hook firing every `count` instructions of `state`, from inside the hook: at every
/// one while a stop unwinds, every [`PREEMPT_RETRY`] while a task that used up its time slice
/// cannot yield.
///
/// The hook is set again in full only when its fields say otherwise, or the first time it
/// fires after an arm that found no hook set: from Lua 5.4 on, `lua_sethook` also marks every
/// frame of the coroutine's call stack, which takes milliseconds a million frames deep, and
/// the hook keeps firing all the while.
///
/// That first time matters: an arm (from the signal handler) that lands while Lua, finding no
/// hook set, is in `luaG_traceexec` has the mark of that frame cleared right after. The full
/// set marks it again as soon as the hook fires in a Lua function the frame calls in the same
/// coroutine; otherwise the next delivery (of the stop, or of the task's time slice) does. Later firings need no new marks:
/// the hook stays set meanwhile, so nothing clears one, and frames begun since were marked as
/// they began.
///
/// # Safety
///
/// `state` must be the running coroutine, inside the interrupt hook.
unsafe fn keep_firing(state: *mut ffi::lua_State, count: c_int) {
    // SAFETY: guaranteed by the caller; these only read or store the hook fields.
    unsafe {
        if must_set(state, count) {
            ffi::lua_sethook(state, Some(interrupt_hook), ffi::LUA_MASKCOUNT, count);
        }
    }
}

/// Keeps `target`, a coroutine suspended in a resume (the running task's own, while a
/// coroutine it resumed runs), armed to fire at its next instruction once control is back in
/// it. Armed in full only when its hook fields say otherwise, or after an arm that found no
/// hook set (which may have raced the marking of its running frame then, see
/// [`keep_firing`]): an arm marks every frame of its call stack from Lua 5.4 on, and the hook
/// of the resumed coroutine may fire many times before it gives control back.
///
/// # Safety
///
/// `target` must be a live coroutine of the VM on this thread, not the running one; called
/// from inside the hook.
unsafe fn keep_armed(target: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller; these only read or store the hook fields.
    unsafe {
        if must_set(target, 1) {
            arm(target);
        }
    }
}

/// Whether the hook of `state` must be set in full to fire every `count` instructions: its
/// fields say otherwise, or an arm since the last look found no hook set (consumed here).
///
/// # Safety
///
/// `state` must be a live coroutine of the VM on this thread; called from inside the hook.
unsafe fn must_set(state: *mut ffi::lua_State, count: c_int) -> bool {
    let rearmed = REARMED.with(|r| r.swap(false, Ordering::Relaxed));
    // SAFETY: guaranteed by the caller; these only read the hook fields.
    let set_already = unsafe {
        ffi::lua_gethook(state)
            .is_some_and(|hook| std::ptr::fn_addr_eq(hook, interrupt_hook as ffi::lua_Hook))
            && ffi::lua_gethookmask(state) == ffi::LUA_MASKCOUNT
            && ffi::lua_gethookcount(state) == count
    };
    let set = rearmed || !set_already;
    #[cfg(test)]
    count_kept_firing(set);
    set
}

/// This thread's registration as the home of one VM; clears it when dropped.
pub(super) struct Registration {
    /// The VM's main state, where requests run.
    main: *mut ffi::lua_State,
    /// The permanent hook's interval, 0 when hooks are set on demand.
    every: c_int,
    _interrupter: Arc<Interrupter>,
}

impl Registration {
    /// Registers `interrupter` for this thread and, with `every`, installs a permanent hook.
    pub(super) fn install(
        lua: &Lua,
        interrupter: &Arc<Interrupter>,
        every: Option<u32>,
    ) -> mlua::Result<Self> {
        let every = every.map_or(0, |e| c_int::try_from(e).unwrap_or(c_int::MAX).max(1));
        let mut main = ptr::null_mut();
        // SAFETY: `exec_raw` calls the closure with the VM's main state inside a protected
        // call; `lua_sethook` only stores the hook fields and cannot raise.
        unsafe {
            lua.exec_raw::<()>((), |state| {
                main = state;
                if every > 0 {
                    ffi::lua_sethook(state, Some(interrupt_hook), ffi::LUA_MASKCOUNT, every);
                }
            })?;
        }
        EVERY.with(|e| e.store(every, Ordering::Relaxed));
        // Whatever an earlier VM on this thread left.
        REARMED.with(|r| r.store(false, Ordering::Relaxed));
        super::stop_error::install(lua)?;
        ACTIVE.with(|a| a.store(Arc::as_ptr(interrupter).cast_mut(), Ordering::Release));
        Ok(Registration {
            main,
            every,
            _interrupter: interrupter.clone(),
        })
    }

    pub(super) fn main_state(&self) -> *mut ffi::lua_State {
        self.main
    }

    pub(super) fn set_deadline(&self, deadline: Option<Instant>) {
        if self.every > 0 {
            DEADLINE.set(deadline);
        }
    }

    /// Puts the permanent hook back on the main state, if there is one: a script with the
    /// `debug` library can remove it.
    pub(super) fn reinstall_permanent(&self) {
        if self.every > 0 {
            // SAFETY: as in `arm_base`; `lua_sethook` only stores the hook fields.
            unsafe {
                ffi::lua_sethook(
                    self.main,
                    Some(interrupt_hook),
                    ffi::LUA_MASKCOUNT,
                    self.every,
                )
            };
        }
    }

    /// Arms the hook on the main state (outside a signal handler).
    pub(super) fn arm_base(&self) {
        // SAFETY: `main` is the main state of the VM this registration belongs to; the VM
        // outlives the registration (the worker drops the registration first).
        unsafe { arm(self.main) };
    }

    /// After a request during which a hook was armed or fired: puts the main state back to
    /// its idle hook (coroutines reset themselves the next time their hook fires).
    pub(super) fn disarm_base_if_touched(&self) {
        if !TOUCHED.with(|t| t.swap(false, Ordering::Relaxed)) {
            return;
        }
        // SAFETY: as in `arm_base`.
        unsafe {
            if self.every > 0 {
                ffi::lua_sethook(
                    self.main,
                    Some(interrupt_hook),
                    ffi::LUA_MASKCOUNT,
                    self.every,
                );
            } else {
                ffi::lua_sethook(self.main, None, 0, 0);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        super::stop_error::uninstall();
        ACTIVE.with(|a| a.store(ptr::null_mut(), Ordering::Release));
        EVERY.with(|e| e.store(0, Ordering::Relaxed));
        DEADLINE.set(None);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::{Interrupt, Isle, IsleError};

    /// An isle from `builder` with `started()`, which reports on the returned channel, and
    /// `done()`, which returns the returned flag.
    #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
    fn isle_waiting_for_done(
        builder: crate::IsleBuilder,
    ) -> (
        Isle,
        std::sync::mpsc::Receiver<()>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, started) = std::sync::mpsc::channel();
        let isle = builder
            .spawn({
                let done = done.clone();
                move |lua| {
                    let started = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
                    lua.globals().set("started", started)?;
                    let done = lua.create_function(move |_, ()| Ok(done.load(Ordering::SeqCst)))?;
                    lua.globals().set("done", done)
                }
            })
            .unwrap();
        (isle, started, done)
    }

    /// An isle from `builder` running a task that waits for `done()` in a `string.gsub`
    /// callback, where it cannot yield; returns once the callback has started. The request
    /// returns "spun" once the flag is set.
    #[cfg(all(unix, any(feature = "lua53", feature = "lua54", feature = "lua55")))]
    fn task_waiting_in_a_callback(
        builder: crate::IsleBuilder,
    ) -> (
        Isle,
        crate::Task<String>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        let (isle, started, done) = isle_waiting_for_done(builder);
        let task = isle
            .spawn_eval::<String>(
                "local spinner = task.spawn(function()
                   string.gsub('x', 'x', function() started() while not done() do end end)
                   return 'spun'
                 end)
                 return spinner:join()",
            )
            .unwrap();
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        (isle, task, done)
    }

    /// Preempts the task running on `isle` now, waits until the hook has looked at it fifty
    /// times (where it cannot yield yet), then sets `done`.
    #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
    fn preempt_until_looked_at(isle: &Isle, done: &std::sync::atomic::AtomicBool) {
        let interrupter = &isle.shared().interrupter;
        let (epoch, in_task) = interrupter.slices().observe();
        assert!(in_task);
        interrupter.preempt(epoch, false);
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while interrupter.kept_firings[0].load(Ordering::SeqCst) < 50 {
            assert!(
                std::time::Instant::now() < give_up,
                "the task was never looked at"
            );
            std::thread::yield_now();
        }
        done.store(true, Ordering::SeqCst);
    }

    /// A stop that Lua code catches again and again (20 nested `pcall`s, each followed by a
    /// loop) keeps the hook firing at every instruction without setting it anew each time
    /// (which, from Lua 5.4 on, marks every frame of the call stack): only once, at the first
    /// firing after the signal's arm found no hook set.
    #[cfg(unix)]
    #[test]
    fn a_hook_firing_for_a_stop_does_not_set_itself_again() {
        for interrupt in [Interrupt::default(), Interrupt::Hook { every: 1000 }] {
            let builder = Isle::builder().interrupt(interrupt);
            let (isle, started) = crate::interrupt::races::isle_with_started(builder, || {});
            let task = isle
                .spawn_eval::<()>(
                    "local function nest(n)
                       if n == 0 then
                         started()
                         while true do end
                       end
                       pcall(nest, n - 1)
                       while true do end
                     end
                     nest(20)",
                )
                .unwrap();
            started.recv_timeout(Duration::from_secs(10)).unwrap();
            task.cancel();
            let result = task.wait_timeout(Duration::from_secs(10)).unwrap();
            assert!(matches!(result, Err(IsleError::Cancelled)), "{result:?}");
            let interrupter = &isle.shared().interrupter;
            let firings = interrupter.kept_firings[0].load(Ordering::SeqCst);
            let set_again = interrupter.kept_firings[1].load(Ordering::SeqCst);
            let arms = interrupter.signal_arms.load(Ordering::SeqCst);
            // Once in the innermost loop, and once in each loop the stop reaches as it unwinds.
            assert!(
                firings > 20,
                "{interrupt:?}: the hook fired {firings} times"
            );
            // On demand, the signal's arm found no hook: the first firing sets it in full. A
            // permanent hook arms the whole resume chain in full at its first sight of the
            // stop, after which it fires at every instruction already.
            let expected = usize::from(interrupt == Interrupt::default());
            assert_eq!(
                set_again, expected,
                "{interrupt:?}: the hook set itself {set_again} times in {firings} firings \
                 ({arms} arms by a signal)"
            );
        }
    }

    /// A task that used up its time slice where it cannot yield (in a `string.gsub` callback,
    /// called from C) is looked at again every hundred instructions until it can, without
    /// the hook setting itself anew each time (from Lua 5.4 on, that marks every frame of the
    /// call stack): once, when it first finds the task there.
    #[cfg(all(unix, any(feature = "lua53", feature = "lua54", feature = "lua55")))]
    #[test]
    fn a_task_that_cannot_yield_yet_is_looked_at_again_without_setting_the_hook_anew() {
        for interrupt in [Interrupt::default(), Interrupt::Hook { every: 1000 }] {
            // A slice far beyond the test: only the test preempts.
            let library = crate::TaskLibrary::new().time_slice(Some(Duration::from_secs(3600)));
            let (isle, task, done) = task_waiting_in_a_callback(
                Isle::builder().interrupt(interrupt).task_library(library),
            );
            preempt_until_looked_at(&isle, &done);
            let interrupter = &isle.shared().interrupter;
            let spun = task.wait_timeout(Duration::from_secs(10)).unwrap().unwrap();
            assert_eq!(spun, "spun");
            let firings = interrupter.kept_firings[0].load(Ordering::SeqCst);
            let set_again = interrupter.kept_firings[1].load(Ordering::SeqCst);
            let arms = interrupter.signal_arms.load(Ordering::SeqCst);
            // On demand, the signal's arm makes the hook fire at the next instruction; with a
            // permanent hook it fires every thousand: either way, the first look sets it to
            // fire every hundred, and later looks leave it so.
            assert_eq!(
                set_again, 1,
                "{interrupt:?}: the hook set itself {set_again} times in {firings} firings \
                 ({arms} arms by a signal)"
            );
        }
    }

    /// A task that stays due for long (here, waiting in a `string.gsub` callback, where it
    /// cannot yield) is signalled again only every fifty slices, not at every tick of the
    /// slice watcher once fifty have passed: each signal may cut a host function's system
    /// call short.
    #[cfg(all(unix, any(feature = "lua53", feature = "lua54", feature = "lua55")))]
    #[test]
    fn a_task_due_for_long_is_signalled_again_only_every_fifty_slices() {
        use std::time::Instant;

        let slice = Duration::from_millis(1);
        let (isle, task, done) = task_waiting_in_a_callback(
            Isle::builder().task_library(crate::TaskLibrary::new().time_slice(Some(slice))),
        );
        let interrupter = &isle.shared().interrupter;
        let before = interrupter.signal_arms.load(Ordering::SeqCst);
        let start = Instant::now();
        // The window watched (a delay in waking up only makes it longer, counted below).
        std::thread::sleep(slice * 300);
        done.store(true, Ordering::SeqCst);
        let spun = task.wait_timeout(Duration::from_secs(10)).unwrap().unwrap();
        let watched = start.elapsed();
        assert_eq!(spun, "spun");
        let arms = interrupter.signal_arms.load(Ordering::SeqCst) - before;
        // One per fifty slices, plus the first delivery and one for a window cut short.
        let most = watched.as_millis() / (slice * 50).as_millis() + 2;
        assert!(
            arms as u128 <= most,
            "{arms} signals in {watched:?} (at most {most} expected)"
        );
    }

    /// While a coroutine the due task resumed runs (a permanent hook fires in it), the task's
    /// own coroutine is kept armed for when control is back in it without being armed anew
    /// at each firing (from Lua 5.4 on, each arm marks every frame of its call stack).
    #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
    #[test]
    fn a_due_task_waiting_on_a_coroutine_it_resumed_is_armed_once() {
        // A slice far beyond the test: only the test preempts.
        let library = crate::TaskLibrary::new().time_slice(Some(Duration::from_secs(3600)));
        let (isle, started, done) = isle_waiting_for_done(
            Isle::builder()
                .interrupt(Interrupt::Hook { every: 100 })
                .task_library(library),
        );
        let task = isle
            .spawn_eval::<String>(
                "local out = {}
                 local spinner = task.spawn(function()
                   local inner = coroutine.create(function() started() while not done() do end end)
                   assert(coroutine.resume(inner))
                   for i = 1, 1e7 do if #out > 0 then break end end
                   out[#out + 1] = 'spinner'
                 end)
                 local sibling = task.spawn(function() out[#out + 1] = 'sibling' end)
                 spinner:join() sibling:join()
                 return table.concat(out, ' ')",
            )
            .unwrap();
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        preempt_until_looked_at(&isle, &done);
        let interrupter = &isle.shared().interrupter;
        // Preempted as soon as the resume returns: its sibling runs first.
        let order = task.wait_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(order, "sibling spinner");
        let firings = interrupter.kept_firings[0].load(Ordering::SeqCst);
        let armed = interrupter.kept_firings[1].load(Ordering::SeqCst);
        assert_eq!(
            armed, 1,
            "the task was armed {armed} times in {firings} firings"
        );
    }
}
