//! The coroutines an interrupt must reach, and the wrapped `coroutine` functions that record
//! them.
//!
//! Lua code runs in the innermost coroutine of the *resume chain*: the main state, the
//! coroutine it resumed, the one that one resumed, and so on. An interrupt arms the hook on all
//! of them, so that each level stops as soon as control returns to it. The chain is recorded by
//! wrapping `coroutine.resume`, `coroutine.wrap` and `coroutine.close` (which runs `__close`
//! handlers inside the coroutine) and, for resumes driven from Rust, by mlua's thread event
//! callback. The records are atomics in `const` thread-locals, readable from a signal handler.
//!
//! On Lua 5.4 and 5.5, `coroutine.create` and `coroutine.wrap` also give every coroutine a
//! protected base frame.
//! When an interrupt kills a coroutine from inside its hook, Lua leaves hooks disabled in that
//! coroutine for good, so its pending `__close` handlers (run later by `coroutine.close`, or at
//! once by a wrapped coroutine) could never be interrupted. The base frame catches the error,
//! which restores the hook state, and raises it again.

use std::cell::RefCell;
use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicPtr, AtomicUsize, Ordering};

use mlua::thread::{ThreadEvent, ThreadStatus, ThreadTriggers};
use mlua::{ffi, Lua};

use super::{hook, probe};

/// Most coroutines a resume chain records, and the deepest resumes may nest: PUC Lua itself
/// stops nesting C calls at about 200; LuaJIT has no limit, and would overflow the stack.
const CHAIN_CAP: usize = 256;
/// Most coroutines resumed from Rust that are tracked at once during one request.
const RUST_CAP: usize = 64;

thread_local! {
    /// The first coroutine resumed from Rust since [`take_first_resumed`] was last called.
    #[cfg(feature = "tokio")]
    static FIRST_RESUMED: RefCell<Option<mlua::Thread>> = const { RefCell::new(None) };
    /// `CHAIN[0]` is the main state; above it, the coroutines being resumed from Lua.
    static CHAIN: [AtomicPtr<ffi::lua_State>; CHAIN_CAP] =
        const { [const { AtomicPtr::new(ptr::null_mut()) }; CHAIN_CAP] };
    static DEPTH: AtomicUsize = const { AtomicUsize::new(0) };
    /// Coroutines resumed from Rust during the running request.
    static RUST: [AtomicPtr<ffi::lua_State>; RUST_CAP] =
        const { [const { AtomicPtr::new(ptr::null_mut()) }; RUST_CAP] };
    static RUST_LEN: AtomicUsize = const { AtomicUsize::new(0) };
    /// Keeps the coroutines in `RUST` alive (never touched by the signal handler).
    static RUST_ANCHORS: RefCell<Vec<mlua::Thread>> = const { RefCell::new(Vec::new()) };
}

/// Arms the hook on every recorded coroutine. Signal-safe: reads atomics only.
pub(super) fn arm_all() {
    let depth = DEPTH.with(|d| d.load(Ordering::Relaxed)).min(CHAIN_CAP);
    CHAIN.with(|chain| {
        for slot in &chain[..depth] {
            let state = slot.load(Ordering::Relaxed);
            if !state.is_null() {
                // SAFETY: recorded states are live: the main state, and coroutines being resumed
                // (kept alive by their resumer's stack).
                unsafe { hook::arm(state) };
            }
        }
    });
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
/// [`pcall`]).
pub(super) fn install(
    lua: &Lua,
    main: *mut ffi::lua_State,
    probe: &mlua::Function,
) -> mlua::Result<()> {
    CHAIN.with(|chain| chain[0].store(main, Ordering::Relaxed));
    DEPTH.with(|d| d.store(1, Ordering::Relaxed));
    wrap_coroutine_functions(lua, probe)?;
    lua.set_thread_event_callback(ThreadTriggers::new().on_resume().on_yield(), |_, event| {
        match event {
            ThreadEvent::Resume(thread) => rust_resumed(thread),
            ThreadEvent::Yield(thread) => rust_yielded(&thread),
            _ => {}
        }
        Ok(())
    });
    Ok(())
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
    DEPTH.with(|d| d.store(0, Ordering::Relaxed));
    RUST_LEN.with(|l| l.store(0, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    RUST_ANCHORS.with_borrow_mut(Vec::clear);
}

/// Records a coroutine resumed from Rust, arming it if an interrupt is pending.
///
/// Published first, checked after: a signal handled in between finds the coroutine recorded
/// and arms it itself; one handled before is seen by the check.
fn rust_resumed(thread: mlua::Thread) {
    let state = thread.to_pointer() as *mut ffi::lua_State;
    #[cfg(feature = "tokio")]
    FIRST_RESUMED.with_borrow_mut(|first| {
        if first.is_none() {
            *first = Some(thread.clone());
        }
    });
    record_rust(thread, state);
    #[cfg(test)]
    crate::pause::at(crate::pause::Window::RustResumed);
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
/// to restore once the resume is over, or `None` if the chain is full.
fn chain_push(co: *mut ffi::lua_State) -> Option<usize> {
    let depth = DEPTH.with(|d| d.load(Ordering::Relaxed));
    if depth >= CHAIN_CAP {
        return None;
    }
    CHAIN.with(|chain| chain[depth].store(co, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    DEPTH.with(|d| d.store(depth + 1, Ordering::Relaxed));
    if hook::pending().is_some() {
        // SAFETY: `co` is the coroutine about to be resumed, on its resumer's stack.
        unsafe { hook::arm(co) };
    }
    Some(depth)
}

/// Restores the chain to `depth` (as it was before the matching push). Restoring rather than
/// popping one entry also drops whatever was pushed inside a coroutine that did not unwind
/// normally: since Lua 5.5 a coroutine can close itself, which leaves every C frame in it at
/// once, so the wrappers running there never get to pop their entries.
fn chain_restore(depth: usize) {
    DEPTH.with(|d| d.store(depth, Ordering::Relaxed));
}

/// Calls the function at `original` with the arguments on the stack while `co` is on the
/// resume chain. Returns the number of results, or the error status with the error object on
/// top of the stack.
///
/// # Safety
///
/// `state` must be the running state, inside a C function call; `original` a valid index.
unsafe fn call_on_chain(
    state: *mut ffi::lua_State,
    co: *mut ffi::lua_State,
    original: c_int,
) -> Result<c_int, c_int> {
    // SAFETY: guaranteed by the caller; the stack gets the slot it needs checked first.
    unsafe {
        let nargs = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 2, ptr::null());
        ffi::lua_pushvalue(state, original);
        ffi::lua_insert(state, 1);
        let pushed = if co.is_null() { None } else { chain_push(co) };
        if !co.is_null() && pushed.is_none() {
            // Deeper than PUC Lua ever nests C calls. LuaJIT sets no limit of its own and
            // would overflow the thread's stack.
            ffi::luaL_error(
                state,
                c"C stack overflow (coroutines nested too deeply)".as_ptr(),
            );
        }
        // A protected call, so that the chain is restored whatever happens.
        let status = ffi::lua_pcall(state, nargs, ffi::LUA_MULTRET, 0);
        if let Some(depth) = pushed {
            chain_restore(depth);
        }
        if status == ffi::LUA_OK {
            Ok(ffi::lua_gettop(state))
        } else {
            Err(status)
        }
    }
}

/// `coroutine.resume` recording its coroutine on the chain. Upvalue 1 is the original, 2 the
/// panic probe: a coroutine that died of a Rust panic passes the panic on to its resumer.
unsafe extern "C-unwind" fn guarded_resume(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the upvalues above. On error the error object
    // is on top of the stack for `lua_error`, which unwinds with no Rust value alive in this
    // frame.
    unsafe {
        // Checked here, so that the error names this function as Lua's would.
        check_coroutine(state);
        let co = ffi::lua_tothread(state, 1);
        match call_on_chain(state, co, ffi::lua_upvalueindex(1)) {
            Ok(n) => pass_panic_on(state, n),
            Err(_) => ffi::lua_error(state),
        }
    }
}

/// `coroutine.close` recording its coroutine on the chain (it runs `__close` handlers there);
/// upvalues as for `guarded_resume`.
unsafe extern "C-unwind" fn guarded_close(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: as `guarded_resume`.
    unsafe {
        check_coroutine(state);
        let co = ffi::lua_tothread(state, 1);
        match call_on_chain(state, co, ffi::lua_upvalueindex(1)) {
            Ok(n) => pass_panic_on(state, n),
            Err(_) => {
                // Its own errors ("cannot close a running coroutine") carry the position of
                // its caller, which the original sees as this C function: add it here.
                prefix_position(state);
                ffi::lua_error(state)
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

/// After `resume` or `close` returned `n` results: if they are `false, err` and `err` carries
/// a panic, raises it; otherwise returns `n`.
///
/// # Safety
///
/// `state` must be the running state inside `guarded_resume` or `guarded_close`.
unsafe fn pass_panic_on(state: *mut ffi::lua_State, n: c_int) -> c_int {
    // SAFETY: guaranteed by the caller: the results are the whole stack; upvalue 2 is the
    // probe.
    unsafe {
        if n >= 2 && ffi::lua_toboolean(state, 1) == 0 {
            probe::reraise_panic(state, 2, ffi::lua_upvalueindex(2));
        }
        n
    }
}

/// Prefixes a string error object on top of the stack with the position of the Lua code that
/// called the running C function.
///
/// # Safety
///
/// `state` must be the running state, inside a C function call, with the error on top.
unsafe fn prefix_position(state: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller; one stack slot is checked first.
    unsafe {
        if ffi::lua_type(state, -1) == ffi::LUA_TSTRING {
            ffi::luaL_checkstack(state, 1, ptr::null());
            ffi::luaL_where(state, 1);
            ffi::lua_insert(state, -2);
            ffi::lua_concat(state, 2);
        }
    }
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
/// Checks that argument 1 is a function (as Lua's `create` and `wrap` do) and replaces it with
/// a protected base frame calling it.
///
/// # Safety
///
/// `state` must be the running state, inside a C function call.
unsafe fn protect_body(state: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller; one stack slot is checked first.
    unsafe {
        ffi::luaL_checktype(state, 1, ffi::LUA_TFUNCTION);
        ffi::luaL_checkstack(state, 1, ptr::null());
        ffi::lua_pushvalue(state, 1);
        ffi::lua_pushcclosure(state, coroutine_body, 1);
        ffi::lua_replace(state, 1);
    }
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
/// `coroutine.create`, giving the coroutine a protected base frame.
unsafe extern "C-unwind" fn guarded_create(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with the original `create` as upvalue 1.
    unsafe {
        protect_body(state);
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, ffi::lua_gettop(state) - 1, ffi::LUA_MULTRET);
        ffi::lua_gettop(state)
    }
}

/// `coroutine.wrap`, giving the coroutine a protected base frame and recording it on the chain
/// whenever the returned function resumes it.
unsafe extern "C-unwind" fn guarded_wrap(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with the original `wrap` as upvalue 1; its result is a C closure
    // whose first upvalue is the new coroutine. Errors unwind with no Rust value alive here.
    unsafe {
        #[cfg(any(feature = "lua54", feature = "lua55"))]
        protect_body(state);
        // The version's own check, raised here so that the error names `wrap` and its caller.
        #[cfg(any(feature = "lua52", feature = "lua53"))]
        ffi::luaL_checktype(state, 1, ffi::LUA_TFUNCTION);
        #[cfg(feature = "lua51")]
        if ffi::lua_isfunction(state, 1) == 0 || ffi::lua_iscfunction(state, 1) != 0 {
            ffi::luaL_argerror(state, 1, c"Lua function expected".as_ptr());
        }
        let nargs = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, 3, ptr::null());
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_call(state, nargs, 1);
        if ffi::lua_getupvalue(state, -1, 1).is_null() {
            ffi::lua_pushnil(state);
        }
        ffi::lua_pushcclosure(state, guarded_wrapped, 2);
        1
    }
}

/// The function `coroutine.wrap` returns: upvalue 1 the original's function, upvalue 2 its
/// coroutine.
unsafe extern "C-unwind" fn guarded_wrapped(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with the two upvalues set by `guarded_wrap`; as `guarded_resume`.
    unsafe {
        let co = ffi::lua_tothread(state, ffi::lua_upvalueindex(2));
        match call_on_chain(state, co, ffi::lua_upvalueindex(1)) {
            Ok(n) => n,
            Err(status) => {
                // The original prefixes string errors with its caller's position; it sees
                // this C function as its caller, so add the Lua caller's position here.
                if status != ffi::LUA_ERRMEM {
                    prefix_position(state);
                }
                ffi::lua_error(state)
            }
        }
    }
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
/// A coroutine's protected base frame: calls upvalue 1 with the arguments and returns its
/// results; an error is caught (which re-enables hooks in the coroutine) and raised again.
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

#[cfg(any(feature = "lua54", feature = "lua55"))]
unsafe extern "C-unwind" fn finish_body(
    state: *mut ffi::lua_State,
    status: c_int,
    _: ffi::lua_KContext,
) -> c_int {
    // SAFETY: called by `coroutine_body` or by Lua as its continuation; on error the error
    // object is on top of the stack.
    unsafe {
        if status != ffi::LUA_OK && status != ffi::LUA_YIELD {
            ffi::lua_error(state);
        }
        ffi::lua_gettop(state)
    }
}

/// `function` wrapped in a coroutine's protected base frame, for coroutines created from Rust.
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

/// Replaces `coroutine.create`, `wrap`, `resume` and `close` with the versions above.
fn wrap_coroutine_functions(lua: &Lua, probe: &mlua::Function) -> mlua::Result<()> {
    let Ok(coroutine) = lua.globals().get::<mlua::Table>("coroutine") else {
        return Ok(());
    };
    let wrappers = [
        #[cfg(any(feature = "lua54", feature = "lua55"))]
        ("create", guarded_create as ffi::lua_CFunction),
        ("wrap", guarded_wrap as ffi::lua_CFunction),
        ("resume", guarded_resume),
        ("close", guarded_close),
    ];
    for (name, wrapper) in wrappers {
        let Ok(original) = coroutine.get::<mlua::Function>(name) else {
            continue;
        };
        // SAFETY: `exec_raw` pushes `original` and the probe and runs the closure in a
        // protected call; `lua_pushcclosure` takes them as upvalues and leaves the closure.
        let guarded: mlua::Function = unsafe {
            lua.exec_raw((original, probe.clone()), |state| {
                ffi::lua_pushcclosure(state, wrapper, 2)
            })?
        };
        coroutine.set(name, guarded)?;
    }
    Ok(())
}
