//! The coroutines an interrupt must reach, and the wrapped `coroutine` functions that record
//! them.
//!
//! Lua code runs in the innermost coroutine of the *resume chain*: the main state, the
//! coroutine it resumed, the one that one resumed, and so on. An interrupt arms the hook on all
//! of them, so that each level stops as soon as control returns to it. The chain is recorded by
//! the isle's `coroutine.resume`, `coroutine.wrap` and `coroutine.close` (which runs `__close`
//! handlers inside the coroutine) and, for resumes driven from Rust, by mlua's thread event
//! callback. The records are atomics in `const` thread-locals, readable from a signal handler.
//!
//! # Like Lua's own
//!
//! A script must not be able to tell these functions from Lua's. Each one does what the
//! version's `lcorolib.c` (`lbaselib.c` on 5.1, `lib_base.c` on LuaJIT) does, with the same
//! checks and messages, and calls `lua_resume` / `lua_closethread` itself, so that a level of
//! nested coroutines costs the C-call levels it costs in plain Lua, and coroutines nest as
//! deeply. Nothing is added to a coroutine's own stack: debug hooks, `debug.traceback` and
//! `debug.getinfo` see what they see in plain Lua.
//!
//! # Coroutines killed by an interrupt (Lua 5.4 and 5.5)
//!
//! Where a coroutine cannot yield (inside a `table.sort` comparator, say), the interrupt hook
//! raises an error, and Lua then leaves hooks disabled in that coroutine for good (see
//! [`allowhook`](super::allowhook)). Its pending `__close` handlers, run when it is closed,
//! could then loop without any hook firing. So:
//!
//! - before the `__close` handlers of a dead coroutine run (`coroutine.close`, or
//!   `coroutine.wrap` closing a coroutine that failed), and before a coroutine is started
//!   (it may have been reset from Rust after such a death), hooks are allowed in it again;
//! - a coroutine that dies while an interrupt is pending is closed at once by
//!   `coroutine.resume`, so that its `__close` handlers are stopped at their first instruction
//!   and nothing is left for a later request to run (a wrapped coroutine is closed at once
//!   anyway).
//!
//! This replaces an earlier design that gave every coroutine a protected base frame (a C
//! function calling the body with `lua_pcallk`, which restores the flag as the error unwinds).
//! That frame was visible (an extra level in `debug.traceback` and `debug.getinfo`, extra
//! call and return events for hooks, the coroutine's stack unwound and its `__close` handlers
//! run as soon as it failed, for any error) and cost a C-call level per coroutine: with the
//! wrappers' own protected call, nested coroutines stopped at 66 levels on 5.4 where plain Lua
//! reaches 198. Keeping the frame could not have been made invisible: the C API can neither read
//! nor set a coroutine's C-call count (`lua_resume` copies it from its `from` argument, and any
//! other state's count leaves out the C calls in between, so the C stack would no longer be
//! bounded), and hiding the frame from `debug` functions would still leave its `pcall` closing
//! and unwinding a coroutine that failed. Coroutine requests (`tokio`), which mlua resumes and
//! closes itself, still get it: see [`protected_body`].

use std::cell::RefCell;
use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicPtr, AtomicUsize, Ordering};

use mlua::thread::{ThreadEvent, ThreadStatus, ThreadTriggers};
use mlua::{ffi, Lua};

#[cfg(any(feature = "lua54", feature = "lua55"))]
use super::allowhook;
use super::{hook, probe};

/// Room for this many coroutines is made in the resume chain at first. PUC Lua never nests
/// resumes deeper than about 200 C calls; LuaJIT sets no limit, and the chain grows.
const CHAIN_START: usize = 256;
/// Most coroutines resumed from Rust that are tracked at once during one request.
const RUST_CAP: usize = 64;

/// The resume chain's storage: `[0]` is the main state; above it, the coroutines being resumed
/// from Lua. Replaced by a bigger one when full, by the Lua thread, never inside a signal
/// handler; a handler on this thread therefore always sees a whole one.
struct Chain {
    states: Box<[AtomicPtr<ffi::lua_State>]>,
}

impl Chain {
    /// A chain with room for `capacity` states, holding `from`'s first `depth`.
    fn new(capacity: usize, from: Option<(&Chain, usize)>) -> Box<Chain> {
        let states = (0..capacity)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect::<Box<[_]>>();
        if let Some((from, depth)) = from {
            for (to, from) in states.iter().zip(&from.states[..depth]) {
                to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        Box::new(Chain { states })
    }
}

thread_local! {
    /// The first coroutine resumed from Rust since [`take_first_resumed`] was last called.
    #[cfg(feature = "tokio")]
    static FIRST_RESUMED: RefCell<Option<mlua::Thread>> = const { RefCell::new(None) };
    /// The resume chain; null while no VM is installed on this thread.
    static CHAIN: AtomicPtr<Chain> = const { AtomicPtr::new(ptr::null_mut()) };
    /// How many entries of `CHAIN` are in use.
    static DEPTH: AtomicUsize = const { AtomicUsize::new(0) };
    /// Coroutines resumed from Rust during the running request.
    static RUST: [AtomicPtr<ffi::lua_State>; RUST_CAP] =
        const { [const { AtomicPtr::new(ptr::null_mut()) }; RUST_CAP] };
    static RUST_LEN: AtomicUsize = const { AtomicUsize::new(0) };
    /// Keeps the coroutines in `RUST` alive (never touched by the signal handler).
    static RUST_ANCHORS: RefCell<Vec<mlua::Thread>> = const { RefCell::new(Vec::new()) };
}

/// Replaces the chain storage with `new` (null to remove it) and frees the old one.
fn replace_chain(new: *mut Chain) {
    compiler_fence(Ordering::SeqCst);
    let old = CHAIN.with(|c| c.swap(new, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from `Box::into_raw` in `install` or `chain_push`. No signal
        // handler can be reading it: handlers run on this thread, to completion, and from now
        // on they find the new one.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// Arms the hook on every recorded coroutine. Signal-safe: reads atomics only.
pub(super) fn arm_all() {
    let chain = CHAIN.with(|c| c.load(Ordering::Relaxed));
    if !chain.is_null() {
        // SAFETY: the chain storage is freed only by the Lua thread outside signal handlers,
        // after it has been replaced (see `replace_chain`).
        let states = unsafe { &(*chain).states };
        let depth = DEPTH.with(|d| d.load(Ordering::Relaxed)).min(states.len());
        for slot in &states[..depth] {
            let state = slot.load(Ordering::Relaxed);
            if !state.is_null() {
                // SAFETY: recorded states are live: the main state, and coroutines being resumed
                // (kept alive by their resumer's stack).
                unsafe { hook::arm(state) };
            }
        }
    }
    let len = RUST_LEN.with(|l| l.load(Ordering::Relaxed)).min(RUST_CAP);
    RUST.with(|rust| {
        for slot in &rust[..len] {
            let state = slot.load(Ordering::Relaxed);
            if !state.is_null() {
                // SAFETY: every recorded state is anchored in `RUST_ANCHORS` until forgotten.
                unsafe { hook::arm(state) };
            }
        }
    });
}

/// Records the main state and installs the wrappers into `lua`; `probe` detects panics (see
/// [`pcall`](super::pcall)).
pub(super) fn install(
    lua: &Lua,
    main: *mut ffi::lua_State,
    probe: &mlua::Function,
) -> mlua::Result<()> {
    // Whatever an earlier VM on this thread left (the thread serves one isle after another)
    // is forgotten first.
    uninstall();
    let chain = Chain::new(CHAIN_START, None);
    chain.states[0].store(main, Ordering::Relaxed);
    DEPTH.with(|d| d.store(1, Ordering::Relaxed));
    replace_chain(Box::into_raw(chain));
    #[cfg(any(feature = "lua54", feature = "lua55"))]
    allowhook::verify(lua);
    anchor_resume_messages(lua)?;
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    stack::record_floor();
    wrap_coroutine_functions(lua, probe)?;
    lua.set_thread_event_callback(ThreadTriggers::new().on_resume().on_yield(), |_, event| {
        match event {
            ThreadEvent::Resume(thread) => {
                // A coroutine reset from Rust after an interrupt killed it must be
                // interruptible again.
                #[cfg(any(feature = "lua54", feature = "lua55"))]
                allow_hooks_to_start(thread.to_pointer() as *mut ffi::lua_State);
                rust_resumed(thread)
            }
            ThreadEvent::Yield(thread) => rust_yielded(&thread),
            _ => {}
        }
        Ok(())
    });
    Ok(())
}

/// Test-only: whether a resume chain is installed on this thread.
#[cfg(all(test, not(any(feature = "luajit", feature = "luajit52"))))]
pub(super) fn is_installed() -> bool {
    !CHAIN.with(|c| c.load(Ordering::Relaxed)).is_null()
}

/// Forgets what the finished request resumed from Rust.
pub(super) fn end_request() {
    #[cfg(feature = "tokio")]
    FIRST_RESUMED.with_borrow_mut(|first| drop(first.take()));
    if RUST_LEN.with(|l| l.swap(0, Ordering::Relaxed)) > 0 {
        compiler_fence(Ordering::SeqCst);
        RUST_ANCHORS.with_borrow_mut(Vec::clear);
    }
    DEPTH.with(|d| d.store(1, Ordering::Relaxed));
}

/// Forgets everything (the VM is going away).
pub(super) fn uninstall() {
    #[cfg(feature = "tokio")]
    FIRST_RESUMED.with_borrow_mut(|first| drop(first.take()));
    DEPTH.with(|d| d.store(0, Ordering::Relaxed));
    replace_chain(ptr::null_mut());
    RUST_LEN.with(|l| l.store(0, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    RUST_ANCHORS.with_borrow_mut(Vec::clear);
}

/// Records a coroutine resumed from Rust, arming it if an interrupt is pending.
///
/// Published first, checked after: a signal handled in between finds the coroutine recorded
/// and arms it itself; one handled before is seen by the check.
fn rust_resumed(thread: mlua::Thread) {
    // Uninstalled: the VM is closing (its final collection may still resume coroutines from
    // Rust) and no request runs any more. Nothing may be recorded then: the record would
    // outlive the VM and be seen by the next isle on this thread.
    if CHAIN.with(|c| c.load(Ordering::Relaxed)).is_null() {
        return;
    }
    let state = thread.to_pointer() as *mut ffi::lua_State;
    #[cfg(feature = "tokio")]
    FIRST_RESUMED.with_borrow_mut(|first| {
        if first.is_none() {
            *first = Some(thread.clone());
        }
    });
    record_rust(thread, state);
    #[cfg(test)]
    crate::core::pause::at(crate::core::pause::Window::RustResumed);
    if hook::pending().is_some() {
        // SAFETY: `state` is a live coroutine of this VM, held by the caller.
        unsafe { hook::arm(state) };
    }
}

/// The first coroutine resumed from Rust since the last call (a coroutine request's own, when
/// called around its poll); clears the record.
#[cfg(feature = "tokio")]
pub(super) fn take_first_resumed() -> Option<mlua::Thread> {
    FIRST_RESUMED.with_borrow_mut(Option::take)
}

/// Records `thread` (whose state is `state`) among the coroutines resumed from Rust, unless it
/// is there already or the record is full.
fn record_rust(thread: mlua::Thread, state: *mut ffi::lua_State) {
    RUST_ANCHORS.with_borrow_mut(|anchors| {
        if anchors
            .iter()
            .any(|t| t.to_pointer() == thread.to_pointer())
        {
            return;
        }
        // Coroutines that finished can never run again: stop tracking them.
        let mut i = 0;
        while i < anchors.len() {
            if matches!(
                anchors[i].status(),
                ThreadStatus::Finished | ThreadStatus::Error
            ) {
                remove_rust(anchors, i);
            } else {
                i += 1;
            }
        }
        let len = anchors.len();
        if len < RUST_CAP {
            RUST.with(|rust| rust[len].store(state, Ordering::Relaxed));
            compiler_fence(Ordering::SeqCst);
            RUST_LEN.with(|l| l.store(len + 1, Ordering::Relaxed));
            anchors.push(thread);
        }
    });
}

fn rust_yielded(thread: &mlua::Thread) {
    RUST_ANCHORS.with_borrow_mut(|anchors| {
        if let Some(i) = anchors
            .iter()
            .position(|t| t.to_pointer() == thread.to_pointer())
        {
            remove_rust(anchors, i);
        }
    });
}

/// Removes entry `i` from `RUST` and its anchor (swap-remove, keeping both in step).
fn remove_rust(anchors: &mut Vec<mlua::Thread>, i: usize) {
    let last = anchors.len() - 1;
    RUST.with(|rust| {
        let moved = rust[last].load(Ordering::Relaxed);
        rust[i].store(moved, Ordering::Relaxed);
    });
    compiler_fence(Ordering::SeqCst);
    RUST_LEN.with(|l| l.store(last, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    // Only now, when a signal handler can no longer see it, may the coroutine be released.
    anchors.swap_remove(i);
}

/// Pushes `co` on the resume chain (arming it if an interrupt is pending); returns the depth
/// to restore once the resume is over.
fn chain_push(co: *mut ffi::lua_State) -> usize {
    let depth = DEPTH.with(|d| d.load(Ordering::Relaxed));
    let chain = CHAIN.with(|c| c.load(Ordering::Relaxed));
    if chain.is_null() {
        // Uninstalled: the VM is closing (its finalizers may still resume coroutines), and
        // no request runs any more.
        return depth;
    }
    // SAFETY: replaced only by this thread, outside signal handlers: here and in
    // `install`/`uninstall`.
    let mut chain = unsafe { &*chain };
    if depth >= chain.states.len() {
        let grown = Box::into_raw(Chain::new(chain.states.len() * 2, Some((chain, depth))));
        replace_chain(grown);
        // SAFETY: just allocated, and now the chain.
        chain = unsafe { &*grown };
    }
    chain.states[depth].store(co, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    DEPTH.with(|d| d.store(depth + 1, Ordering::Relaxed));
    if hook::pending().is_some() {
        // SAFETY: `co` is the coroutine about to be resumed, on its resumer's stack.
        unsafe { hook::arm(co) };
    }
    depth
}

/// Restores the chain to `depth` (as it was before the matching push). Restoring rather than
/// popping one entry also drops whatever was pushed inside a coroutine that did not unwind
/// normally: since Lua 5.5 a coroutine can close itself, which leaves every C frame in it at
/// once, so the wrappers running there never get to restore their entries.
fn chain_restore(depth: usize) {
    DEPTH.with(|d| d.store(depth, Ordering::Relaxed));
}

/// Before `co` is started: a coroutine that an interrupt killed and Rust then reset has hooks
/// disabled; allow them again.
#[cfg(any(feature = "lua54", feature = "lua55"))]
fn allow_hooks_to_start(co: *mut ffi::lua_State) {
    // SAFETY: `co` is a live coroutine about to be resumed; with no frames it is neither
    // running nor inside a hook.
    unsafe {
        if allowhook::has_no_frames(co) {
            allowhook::restore(co);
        }
    }
}

/// What a resume left on top of the resumer's stack.
enum Resumed {
    /// This many values the coroutine yielded or returned.
    Values(c_int),
    /// An error object; for `coroutine.wrap` on Lua 5.4 and 5.5, the status of closing the
    /// coroutine that failed (as `auxwrap` keeps it).
    Error(c_int),
}

/// Whether a resume is for `coroutine.wrap` (which closes a coroutine that failed, from 5.4 on).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    Resume,
    Wrap,
}

/// Resumes `co` with the `narg` values on top of `state`'s stack, as the version's `auxresume`
/// does, with `co` on the resume chain meanwhile. On Lua 5.4 and 5.5, a coroutine that failed
/// is then closed, as `auxwrap` does for `Caller::Wrap`, and for `Caller::Resume` too if an
/// interrupt is pending (its `__close` handlers are then stopped at once).
///
/// # Safety
///
/// `state` must be the running state, inside a C function call; `co` a coroutine of its VM
/// kept alive by `state`'s stack, with at least `narg` values above it.
unsafe fn resume(
    state: *mut ffi::lua_State,
    co: *mut ffi::lua_State,
    narg: c_int,
    caller: Caller,
) -> Resumed {
    // SAFETY: guaranteed by the caller. Between `chain_push` and `chain_restore` nothing can
    // raise an error in `state` (`lua_resume` and `lua_closethread` catch everything raised in
    // `co`), so the chain is always restored; errors are raised before or after.
    unsafe {
        if let Some(refused) = refuse(state, co, narg) {
            ffi::lua_pushstring(state, refused.as_ptr());
            return Resumed::Error(ffi::LUA_ERRRUN);
        }
        #[cfg(any(feature = "lua54", feature = "lua55"))]
        allow_hooks_to_start(co);
        ffi::lua_xmove(state, co, narg);
        #[cfg(feature = "lua51")]
        lua_setlevel(state, co);
        let depth = chain_push(co);
        let mut nres = 0;
        let status = ffi::lua_resume(co, state, narg, &mut nres);
        let result = if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
            Resumed::Values(nres)
        } else {
            ffi::lua_xmove(co, state, 1);
            #[cfg(any(feature = "lua54", feature = "lua55"))]
            let status = close_failed(state, co, caller);
            Resumed::Error(status)
        };
        chain_restore(depth);
        #[cfg(not(any(feature = "lua54", feature = "lua55")))]
        let _ = caller;
        match result {
            Resumed::Values(n) => {
                if ffi::lua_checkstack(state, n + 1) == 0 {
                    ffi::lua_pop(co, n);
                    return too_many_results(state);
                }
                ffi::lua_xmove(co, state, n);
                Resumed::Values(n)
            }
            error => error,
        }
    }
}

/// Why `co` cannot be resumed with `narg` values, checked before `lua_resume` as the version's
/// `auxresume` checks it (`lua_resume` itself refuses the rest).
///
/// # Safety
///
/// As [`resume`].
unsafe fn refuse(
    state: *mut ffi::lua_State,
    co: *mut ffi::lua_State,
    narg: c_int,
) -> Option<&'static std::ffi::CStr> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(feature = "lua51")]
        {
            let status = costatus(state, co);
            if ffi::lua_checkstack(co, narg) == 0 {
                ffi::luaL_error(state, c"too many arguments to resume".as_ptr());
            }
            match status {
                CoStatus::Suspended => None,
                CoStatus::Running => Some(c"cannot resume running coroutine"),
                CoStatus::Normal => Some(c"cannot resume normal coroutine"),
                CoStatus::Dead => Some(c"cannot resume dead coroutine"),
            }
        }
        #[cfg(any(feature = "luajit", feature = "luajit52"))]
        {
            match costatus(state, co) {
                CoStatus::Running | CoStatus::Normal => Some(c"cannot resume running coroutine"),
                CoStatus::Dead => Some(c"cannot resume dead coroutine"),
                CoStatus::Suspended => {
                    if ffi::lua_checkstack(co, narg) == 0 {
                        ffi::luaL_error(state, c"stack overflow".as_ptr());
                    }
                    // As PUC Lua words it when resumes nest too deeply.
                    stack::exhausted().then_some(c"C stack overflow")
                }
            }
        }
        #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luajit52")))]
        {
            if ffi::lua_checkstack(co, narg) == 0 {
                return Some(c"too many arguments to resume");
            }
            #[cfg(any(feature = "lua52", feature = "lua53"))]
            if ffi::lua_status(co) == ffi::LUA_OK && ffi::lua_gettop(co) == 0 {
                return Some(c"cannot resume dead coroutine");
            }
            let _ = state;
            None
        }
    }
}

/// After a resume returned `n` values that do not fit on `state`'s stack.
///
/// # Safety
///
/// As [`resume`].
unsafe fn too_many_results(state: *mut ffi::lua_State) -> Resumed {
    // SAFETY: guaranteed by the caller; `lua_pushstring` needs no more than the stack's spare
    // slots Lua always keeps for C functions.
    unsafe {
        #[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
        ffi::luaL_error(state, c"too many results to resume".as_ptr());
        ffi::lua_pushstring(state, c"too many results to resume".as_ptr());
        Resumed::Error(ffi::LUA_ERRRUN)
    }
}

/// After `co` returned an error (moved to `state`): if it died, closes it when `auxwrap` would
/// (`Caller::Wrap`), or when an interrupt is pending. Returns the status `auxwrap` goes on
/// with.
///
/// # Safety
///
/// As [`resume`], with `co` on the resume chain.
#[cfg(any(feature = "lua54", feature = "lua55"))]
unsafe fn close_failed(
    state: *mut ffi::lua_State,
    co: *mut ffi::lua_State,
    caller: Caller,
) -> c_int {
    // SAFETY: guaranteed by the caller. `co` is dead, so not running nor inside a hook.
    unsafe {
        let status = ffi::lua_status(co);
        if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
            // Refused by `lua_resume` ("cannot resume dead coroutine", "C stack overflow").
            return status;
        }
        match caller {
            Caller::Wrap => {
                allowhook::restore(co);
                let status = ffi::lua_closethread(co, state);
                ffi::lua_xmove(co, state, 1);
                status
            }
            // Only where hooks can be allowed again: otherwise its handlers would run with
            // hooks off, and are better left pending, as plain Lua leaves them.
            Caller::Resume if hook::pending().is_some() && allowhook::available() => {
                allowhook::restore(co);
                ffi::lua_closethread(co, state);
                // The error of closing stays behind: the coroutine is dead with nothing left.
                ffi::lua_settop(co, 0);
                status
            }
            Caller::Resume => status,
        }
    }
}

/// A coroutine's status as `coroutine.status` names it.
#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
#[derive(Clone, Copy, PartialEq, Eq)]
enum CoStatus {
    Running,
    Suspended,
    Normal,
    Dead,
}

/// `co`'s status, seen from `state` (Lua 5.1's `costatus`; LuaJIT tells the same cases apart).
///
/// # Safety
///
/// As [`resume`].
#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
unsafe fn costatus(state: *mut ffi::lua_State, co: *mut ffi::lua_State) -> CoStatus {
    if state == co {
        return CoStatus::Running;
    }
    // SAFETY: guaranteed by the caller; these calls only read `co`.
    unsafe {
        match ffi::lua_status(co) {
            ffi::LUA_YIELD => CoStatus::Suspended,
            ffi::LUA_OK => {
                let mut ar: ffi::lua_Debug = std::mem::zeroed();
                if ffi::lua_getstack(co, 0, &mut ar) > 0 {
                    CoStatus::Normal
                } else if ffi::lua_gettop(co) == 0 {
                    CoStatus::Dead
                } else {
                    CoStatus::Suspended
                }
            }
            _ => CoStatus::Dead,
        }
    }
}

#[cfg(feature = "lua51")]
unsafe extern "C-unwind" {
    /// Lua 5.1's: gives `to` the C-call level of `from`, as `coroutine.resume` does before it
    /// resumes `to`.
    fn lua_setlevel(from: *mut ffi::lua_State, to: *mut ffi::lua_State);
}

/// LuaJIT sets no limit on how deeply resumes nest: each level takes a little of the thread's
/// stack. Plain LuaJIT nests until the stack overflows and the process dies; the isle refuses
/// to resume a little earlier, with Lua's "C stack overflow".
#[cfg(any(feature = "luajit", feature = "luajit52"))]
mod stack {
    use std::cell::Cell;

    /// Stack kept free below the deepest resume.
    const HEADROOM: usize = 256 << 10;

    thread_local! {
        /// Lowest stack address a resume may start at; 0 when unknown.
        static FLOOR: Cell<usize> = const { Cell::new(0) };
    }

    /// Records the limit for the calling thread (the isle's).
    pub(super) fn record_floor() {
        if let Some((low, size)) = bounds() {
            FLOOR.set(low + HEADROOM.min(size / 4));
        }
    }

    /// Whether the stack is nearly exhausted.
    pub(super) fn exhausted() -> bool {
        let here = 0u8;
        (&raw const here as usize) < FLOOR.get()
    }

    /// The calling thread's stack: lowest address and size.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn bounds() -> Option<(usize, usize)> {
        // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is read and destroyed
        // after; the calls only describe the calling thread.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
                return None;
            }
            let mut addr = std::ptr::null_mut();
            let mut size = 0;
            let found = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
            libc::pthread_attr_destroy(&mut attr);
            found.then_some((addr as usize, size))
        }
    }

    /// The calling thread's stack: lowest address and size.
    #[cfg(target_os = "macos")]
    fn bounds() -> Option<(usize, usize)> {
        // SAFETY: both only describe the calling thread.
        unsafe {
            let thread = libc::pthread_self();
            let top = libc::pthread_get_stackaddr_np(thread) as usize;
            let size = libc::pthread_get_stacksize_np(thread);
            Some((top - size, size))
        }
    }

    /// Elsewhere the stack's bounds are not looked up: resumes nest as in plain LuaJIT.
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
    fn bounds() -> Option<(usize, usize)> {
        None
    }
}

/// `coroutine.resume`; upvalue 1 is the panic probe: a coroutine that died of a Rust panic
/// passes the panic on to its resumer.
unsafe extern "C-unwind" fn guarded_resume(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the probe as upvalue. Errors unwind with no
    // Rust value alive in this frame.
    unsafe {
        check_coroutine(state);
        let co = ffi::lua_tothread(state, 1);
        match resume(state, co, ffi::lua_gettop(state) - 1, Caller::Resume) {
            Resumed::Values(n) => {
                ffi::lua_pushboolean(state, 1);
                ffi::lua_insert(state, -(n + 1));
                n + 1
            }
            Resumed::Error(_) => {
                probe::reraise_panic(state, -1, ffi::lua_upvalueindex(1));
                ffi::lua_pushboolean(state, 0);
                ffi::lua_insert(state, -2);
                2
            }
        }
    }
}

/// Raises the argument error Lua's own `coroutine` functions raise unless argument 1 is a
/// coroutine.
///
/// # Safety
///
/// `state` must be the running state, inside a C function call.
unsafe fn check_coroutine(state: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(any(feature = "lua54", feature = "lua55"))]
        ffi::luaL_checktype(state, 1, ffi::LUA_TTHREAD);
        #[cfg(not(any(feature = "lua54", feature = "lua55")))]
        if ffi::lua_type(state, 1) != ffi::LUA_TTHREAD {
            // Lua 5.3 words it "thread expected", 5.1, 5.2 and LuaJIT "coroutine expected".
            let expected = if cfg!(feature = "lua53") {
                c"thread expected"
            } else {
                c"coroutine expected"
            };
            ffi::luaL_argerror(state, 1, expected.as_ptr());
        }
    }
}

/// Keeps the messages of a resume that fails before it starts interned for good.
///
/// Lua 5.3 to 5.5 build them in the coroutine outside any protected call: if that allocation
/// failed (the VM at its memory limit), the error would be thrown past this module's wrappers
/// into the resumer's protected call, leaving the coroutine recorded on the resume chain after
/// it may have been freed. A short string that already exists is found, not allocated.
fn anchor_resume_messages(lua: &Lua) -> mlua::Result<()> {
    const MESSAGES: [&std::ffi::CStr; 3] = [
        c"cannot resume dead coroutine",
        c"cannot resume non-suspended coroutine",
        c"C stack overflow",
    ];
    // SAFETY: `exec_raw` runs the closure in a protected call (a memory error becomes an
    // `Err`) on the main state, which has room for the three values used at a time.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_createtable(state, MESSAGES.len() as c_int, 0);
            for (i, message) in MESSAGES.iter().enumerate() {
                ffi::lua_pushstring(state, message.as_ptr());
                ffi::lua_rawseti(state, -2, (i + 1) as _);
            }
            ffi::lua_pushstring(state, c"mlua_isle.resume_messages".as_ptr());
            ffi::lua_insert(state, -2);
            ffi::lua_rawset(state, ffi::LUA_REGISTRYINDEX);
        })
    }
}

/// The depth of the resume chain on this thread (1 between resumes: the main state).
#[cfg(all(test, any(feature = "lua53", feature = "lua54", feature = "lua55")))]
pub(super) fn depth() -> usize {
    DEPTH.with(|d| d.load(Ordering::Relaxed))
}

/// `coroutine.wrap`: creates the coroutine with the original (upvalue 1) and returns a function
/// that resumes it as Lua's does.
unsafe extern "C-unwind" fn guarded_wrap(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with the original `wrap` as upvalue 1; its result is a closure
    // whose first upvalue is the new coroutine. Errors unwind with no Rust value alive here.
    unsafe {
        // The version's own check, raised here so that the error names `wrap` and its caller.
        #[cfg(not(feature = "lua51"))]
        ffi::luaL_checktype(state, 1, ffi::LUA_TFUNCTION);
        #[cfg(feature = "lua51")]
        if ffi::lua_isfunction(state, 1) == 0 || ffi::lua_iscfunction(state, 1) != 0 {
            ffi::luaL_argerror(state, 1, c"Lua function expected".as_ptr());
        }
        let nargs = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 2, ptr::null());
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, nargs, 1);
        let has_upvalue = !ffi::lua_getupvalue(state, -1, 1).is_null();
        if !has_upvalue || ffi::lua_type(state, -1) != ffi::LUA_TTHREAD {
            // Not Lua's own `wrap` (a VM factory replaced it): hand its result back as it is.
            if has_upvalue {
                ffi::lua_pop(state, 1);
            }
            return 1;
        }
        ffi::lua_pushcclosure(state, guarded_wrapped, 1);
        1
    }
}

/// The function `coroutine.wrap` returns: upvalue 1 is its coroutine.
unsafe extern "C-unwind" fn guarded_wrapped(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with the upvalue set by `guarded_wrap`, the stack holding the
    // arguments only. Errors unwind with no Rust value alive in this frame.
    unsafe {
        let co = ffi::lua_tothread(state, ffi::lua_upvalueindex(1));
        match resume(state, co, ffi::lua_gettop(state), Caller::Wrap) {
            Resumed::Values(n) => n,
            Resumed::Error(status) => {
                // The error, prefixed with the position of the Lua code calling this function
                // if it is a string (a number too before 5.3), but not a memory error (5.4 on).
                let _ = status;
                #[cfg(any(feature = "lua51", feature = "lua52"))]
                let prefix = ffi::lua_isstring(state, -1) != 0;
                #[cfg(not(any(feature = "lua51", feature = "lua52")))]
                let prefix = ffi::lua_type(state, -1) == ffi::LUA_TSTRING;
                #[cfg(any(feature = "lua54", feature = "lua55"))]
                let prefix = prefix && status != ffi::LUA_ERRMEM;
                if prefix {
                    ffi::luaL_where(state, 1);
                    ffi::lua_insert(state, -2);
                    ffi::lua_concat(state, 2);
                }
                ffi::lua_error(state)
            }
        }
    }
}

/// `coroutine.close` (Lua 5.4 and 5.5), with the coroutine on the resume chain while its
/// `__close` handlers run. Upvalue 1 is the panic probe.
#[cfg(any(feature = "lua54", feature = "lua55"))]
unsafe extern "C-unwind" fn guarded_close(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the probe as upvalue. Errors unwind with no
    // Rust value alive in this frame; closing itself (5.5) does not return here.
    unsafe {
        // Lua 5.5 closes the running coroutine when given none.
        #[cfg(feature = "lua55")]
        let co = if ffi::lua_type(state, 1) == ffi::LUA_TNONE {
            state
        } else {
            check_coroutine(state);
            ffi::lua_tothread(state, 1)
        };
        #[cfg(feature = "lua54")]
        let co = {
            check_coroutine(state);
            ffi::lua_tothread(state, 1)
        };
        let status = ffi::lua_status(co);
        // Dead, suspended or not started: not running, nor waiting for another coroutine.
        let closable = co != state && (status != ffi::LUA_OK || allowhook::has_no_frames(co));
        if !closable {
            let name = if co == state { c"running" } else { c"normal" };
            #[cfg(feature = "lua55")]
            if co == state {
                ffi::luaL_checkstack(state, 1, ptr::null());
                ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, ffi::LUA_RIDX_MAINTHREAD);
                if ffi::lua_tothread(state, -1) == co {
                    ffi::luaL_error(state, c"cannot close main thread".as_ptr());
                }
                // Leaves every frame of this coroutine: does not return.
                ffi::lua_closethread(co, state);
            }
            ffi::luaL_error(
                state,
                c"cannot close a %s coroutine".as_ptr(),
                name.as_ptr(),
            );
        }
        if status != ffi::LUA_OK && status != ffi::LUA_YIELD {
            // Died of an error, perhaps raised by the interrupt hook: let its `__close`
            // handlers be interrupted.
            allowhook::restore(co);
        }
        let depth = chain_push(co);
        let status = ffi::lua_closethread(co, state);
        chain_restore(depth);
        ffi::luaL_checkstack(state, 2, ptr::null());
        if status == ffi::LUA_OK {
            ffi::lua_pushboolean(state, 1);
            1
        } else {
            ffi::lua_pushboolean(state, 0);
            ffi::lua_xmove(co, state, 1);
            probe::reraise_panic(state, -1, ffi::lua_upvalueindex(1));
            2
        }
    }
}

/// A coroutine request's protected base frame: calls upvalue 1 with the arguments and returns
/// its results; an error is caught (which re-enables hooks in the coroutine) and raised again.
///
/// mlua resumes a coroutine request's coroutine and, once it is done, closes it for reuse
/// (`lua_closethread`), both out of the wrappers' reach: this frame is what keeps the
/// `__close` handlers of one that an interrupt killed interruptible.
#[cfg(all(feature = "tokio", any(feature = "lua54", feature = "lua55")))]
unsafe extern "C-unwind" fn coroutine_body(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as the body of a coroutine, with the user's function as upvalue;
    // `lua_pcallk` with a continuation lets the function yield.
    unsafe {
        let nargs = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 1, ptr::null());
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        let status = ffi::lua_pcallk(state, nargs, ffi::LUA_MULTRET, 0, 0, Some(finish_body));
        finish_body(state, status, 0)
    }
}

#[cfg(all(feature = "tokio", any(feature = "lua54", feature = "lua55")))]
unsafe extern "C-unwind" fn finish_body(
    state: *mut ffi::lua_State,
    status: c_int,
    _: ffi::lua_KContext,
) -> c_int {
    // SAFETY: called by `coroutine_body` or by Lua as its continuation; on error the error
    // object is on top of the stack.
    unsafe {
        if status != ffi::LUA_OK && status != ffi::LUA_YIELD {
            // The error value as raised, before mlua turns it into text.
            #[cfg(feature = "serde")]
            {
                ffi::luaL_checkstack(state, 2, ptr::null());
                crate::convert::error_slot::note(state, -1);
            }
            ffi::lua_error(state);
        }
        ffi::lua_gettop(state)
    }
}

/// `function` wrapped in a protected base frame, for the coroutine of a coroutine request.
#[cfg(all(feature = "tokio", any(feature = "lua54", feature = "lua55")))]
pub(super) fn protected_body(lua: &Lua, function: mlua::Function) -> mlua::Result<mlua::Function> {
    // SAFETY: `exec_raw` pushes `function` and runs the closure in a protected call;
    // `lua_pushcclosure` takes it as the single upvalue and leaves the closure as result.
    unsafe {
        lua.exec_raw(function, |state| {
            ffi::lua_pushcclosure(state, coroutine_body, 1)
        })
    }
}

/// Replaces `coroutine.wrap`, `resume` and `close` with the versions above.
fn wrap_coroutine_functions(lua: &Lua, probe: &mlua::Function) -> mlua::Result<()> {
    let Ok(coroutine) = lua.globals().get::<mlua::Table>("coroutine") else {
        return Ok(());
    };
    // `wrap` keeps the original to create its coroutine; the others need the panic probe.
    let wrappers = [
        ("wrap", guarded_wrap as ffi::lua_CFunction),
        ("resume", guarded_resume),
        #[cfg(any(feature = "lua54", feature = "lua55"))]
        ("close", guarded_close),
    ];
    for (name, wrapper) in wrappers {
        let Ok(original) = coroutine.get::<mlua::Function>(name) else {
            continue;
        };
        let upvalue = if name == "wrap" {
            original
        } else {
            probe.clone()
        };
        // SAFETY: `exec_raw` pushes the upvalue and runs the closure in a protected call;
        // `lua_pushcclosure` takes it as the single upvalue and leaves the closure as result.
        let guarded: mlua::Function =
            unsafe { lua.exec_raw(upvalue, |state| ffi::lua_pushcclosure(state, wrapper, 1))? };
        coroutine.set(name, guarded)?;
    }
    Ok(())
}
