//! Guards against bugs in Lua's own C code that a script could reach to crash the process.
//!
//! Each guard replaces or wraps one library function so that the input that would crash turns
//! into a Lua error, and leaves every other input to the original, so that results, error
//! messages and positions stay the version's own. Only the versions with such a bug get a
//! guard:
//!
//! - **Lua 5.1** — `unpack` computes its result count in an `int` that overflows
//!   (CVE-2025-46817); the pattern matcher of `string.find`, `match`, `gmatch` and `gsub`
//!   recurses once per pattern item with no depth limit (Lua 5.2 added one).
//! - **LuaJIT** — nothing limits how deeply C calls nest: every coroutine has a Lua stack of its
//!   own, so recursion through a C function that calls back into Lua (each `string.gsub` level
//!   holds an 8 KiB buffer, each nested `load` its parser state) can be repeated in every
//!   coroutine of a chain until the thread's stack overflows. Within one coroutine it ends
//!   with the Lua stack, but an error raised there takes LuaJIT's unwinder a time quadratic in
//!   the C calls it crosses (8 000 `string.gsub` levels: about a second, during which no hook
//!   runs), so the guarded functions also stop once [`LUAJIT_NESTING`] of stack is in use.
//!
//! The other versions have none that a script can reach: Lua 5.2 to 5.5 and Luau count nested
//! C calls (and pattern recursion) and raise "C stack overflow" or "pattern too complex".

#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
use std::cell::Cell;

use mlua::Lua;

#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
thread_local! {
    /// The lowest stack address the guards let this (Lua) thread reach; 0 where nothing was
    /// recorded.
    static STACK: Cell<usize> = const { Cell::new(0) };
}

/// The most stack the guarded LuaJIT functions let the Lua thread use: twice the 8 MiB main
/// thread stack on which plain LuaJIT runs out after about 900 nested `string.gsub` calls. An
/// isle stops the same recursion after about 1 900 levels, whose error unwinds in tens of
/// milliseconds.
#[cfg(any(feature = "luajit", feature = "luajit52"))]
const LUAJIT_NESTING: usize = 16 << 20;

/// Records the stack of the calling thread, which was started with `stack_size` bytes of
/// stack, for the guards that check how much of it is left. Called first thing on the Lua
/// thread, close to the top of its stack.
pub(crate) fn record_stack(stack_size: usize) {
    #[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
    {
        let here = stack_address();
        // The frames above this one (the thread's start, a few KiB) are counted as used twice
        // over by this estimate; the reserve covers that.
        let floor = here.saturating_sub(stack_size);
        #[allow(unused_mut)]
        let mut limit = floor.saturating_add(reserve(stack_size));
        #[cfg(any(feature = "luajit", feature = "luajit52"))]
        {
            limit = limit.max(here.saturating_sub(LUAJIT_NESTING));
        }
        STACK.with(|s| s.set(limit));
    }
    #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luajit52")))]
    let _ = stack_size;
}

/// The stack kept free by the guards: enough for what runs between two checks and for raising
/// the error, but never more than a quarter of a small stack.
#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
fn reserve(stack_size: usize) -> usize {
    // On LuaJIT, what one coroutine can use below a check without passing another one (a
    // recursion through `string.format` and `__tostring`, bounded by its Lua stack: about
    // 2 MiB) must fit too.
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    const RESERVE: usize = 16 << 20;
    #[cfg(feature = "lua51")]
    const RESERVE: usize = 256 << 10;
    RESERVE.min(stack_size / 4)
}

/// The address of a local of the caller's frame (the stack grows down on every platform Lua
/// runs on).
#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
#[inline(never)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Bytes of stack the guards still let this thread use, or `usize::MAX` when its stack was
/// not recorded.
#[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
fn stack_left() -> usize {
    let limit = STACK.with(Cell::get);
    if limit == 0 {
        return usize::MAX;
    }
    stack_address().saturating_sub(limit)
}

/// Installs the guards of this Lua version into `lua`. Runs after the isle's other wrappers,
/// so that it wraps them.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    #[cfg(feature = "lua51")]
    lua51::install(lua)?;
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    luajit::install(lua)?;
    #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luajit52")))]
    let _ = lua;
    Ok(())
}

#[cfg(feature = "lua51")]
mod lua51 {
    //! Lua 5.1: `unpack` and the pattern matcher.

    use std::ffi::{c_int, c_void};

    use mlua::{ffi, Lua};

    use super::stack_left;
    use crate::lua_thread::stand_in::{is_plain_c_function, original, push_stand_in, Originals};

    /// The originals each guard may run (see [`Originals`]).
    static FIND: Originals = Originals::new();
    static MATCH: Originals = Originals::new();
    static GMATCH: Originals = Originals::new();
    static GMATCH_STEP: Originals = Originals::new();

    /// Stack one level of pattern recursion may take (`match` plus `max_expand` or
    /// `start_capture`): about 160 bytes unoptimized, a third of that optimized.
    const PATTERN_LEVEL: usize = 512;

    pub(super) fn install(lua: &Lua) -> mlua::Result<()> {
        // SAFETY: `exec_raw` runs the closure in a protected call on the VM's main state with
        // room for a few values; globals and the `string` table are read and written with the
        // C API, each value checked before use.
        unsafe {
            lua.exec_raw::<()>((), |state| {
                ffi::lua_getglobal(state, c"unpack".as_ptr());
                if is_plain_c_function(state, -1) {
                    // Nothing of the original is needed: the checked version replaces it.
                    ffi::lua_pushcfunction(state, checked_unpack);
                    ffi::lua_setglobal(state, c"unpack".as_ptr());
                }
                ffi::lua_pop(state, 1);

                ffi::lua_getglobal(state, c"string".as_ptr());
                if ffi::lua_type(state, -1) == ffi::LUA_TTABLE {
                    let string = ffi::lua_gettop(state);
                    for (name, guard, originals) in [
                        (c"find", guarded_find as ffi::lua_CFunction, &FIND),
                        (c"match", guarded_match, &MATCH),
                        (c"gsub", guarded_match, &MATCH),
                        (c"gmatch", guarded_gmatch, &GMATCH),
                    ] {
                        ffi::lua_getfield(state, string, name.as_ptr());
                        if is_plain_c_function(state, -1) {
                            push_stand_in(state, guard, originals);
                            ffi::lua_setfield(state, string, name.as_ptr());
                        } else {
                            ffi::lua_pop(state, 1);
                        }
                    }
                }
                ffi::lua_pop(state, 1);
            })
        }
    }

    /// `unpack(t [, i [, j]])`: Lua 5.1's own, except that the number of results is computed
    /// without overflowing. Lua 5.1 computes `j - i + 1` in an `int`: for a range of 2^31
    /// values or more the result is undefined, and optimized builds push values until the
    /// stack is overrun (CVE-2025-46817). Here, as in Lua 5.2 and later, such a range raises
    /// "too many results to unpack".
    unsafe extern "C-unwind" fn checked_unpack(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua as a C function; mirrors Lua 5.1's `luaB_unpack`, arguments
        // read (and errors raised) in the same order. `lua_checkstack` makes room for every
        // value pushed.
        unsafe {
            ffi::luaL_checktype(state, 1, ffi::LUA_TTABLE);
            // `luaL_optint` and `luaL_checkint`: a `lua_Integer` cut to an `int`.
            let i = ffi::luaL_optinteger(state, 2, 1) as c_int;
            let e = if ffi::lua_isnoneornil(state, 3) != 0 {
                ffi::lua_objlen(state, 1) as c_int
            } else {
                ffi::luaL_checkinteger(state, 3) as c_int
            };
            if i > e {
                return 0;
            }
            let n = i64::from(e) - i64::from(i) + 1;
            if n > i64::from(c_int::MAX) || ffi::lua_checkstack(state, n as c_int) == 0 {
                return ffi::luaL_error(state, c"too many results to unpack".as_ptr());
            }
            for k in i..=e {
                ffi::lua_rawgeti(state, 1, k.into());
            }
            n as c_int
        }
    }

    /// `string.find(s, pattern [, init [, plain]])`, upvalue 1 the original.
    unsafe extern "C-unwind" fn guarded_find(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua as a C function; the original runs in this very call, with
        // the same arguments, as if Lua had called it.
        unsafe {
            if ffi::lua_toboolean(state, 4) == 0 {
                check_pattern(state, 2);
            }
            original(state, ffi::lua_upvalueindex(1), &FIND)(state)
        }
    }

    /// `string.match` and `string.gsub` (the pattern is argument 2), upvalue 1 the original.
    unsafe extern "C-unwind" fn guarded_match(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: as `guarded_find`.
        unsafe {
            check_pattern(state, 2);
            original(state, ffi::lua_upvalueindex(1), &MATCH)(state)
        }
    }

    /// `string.gmatch(s, pattern)`, upvalue 1 the original. The matching happens in the
    /// iterator, maybe deeper in the stack: the iterator is guarded too.
    unsafe extern "C-unwind" fn guarded_gmatch(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua as a C function. The original leaves its iterator, a C closure
        // with three upvalues (subject, pattern, position), on top of the stack; it is rebuilt
        // with the same upvalues plus the original iterator and the pattern's recursion bound,
        // within the `LUA_MINSTACK` slots a C function may use.
        unsafe {
            let n = original(state, ffi::lua_upvalueindex(1), &GMATCH)(state);
            let iterator = ffi::lua_gettop(state);
            let Some(step) = ffi::lua_tocfunction(state, iterator) else {
                return n;
            };
            for k in 1..=3 {
                if ffi::lua_getupvalue(state, iterator, k).is_null() {
                    ffi::lua_settop(state, iterator);
                    return n;
                }
            }
            // Unrecorded (no slot left), it is refused when the iterator runs.
            let _ = GMATCH_STEP.record(step);
            ffi::lua_pushlightuserdata(state, step as *mut c_void);
            ffi::lua_pushcclosure(state, guarded_gmatch_step, 4);
            ffi::lua_replace(state, iterator);
            n
        }
    }

    /// The iterator `string.gmatch` returns: upvalues 1 to 3 those of the original iterator
    /// (which it reads and updates as its own), upvalue 4 the original iterator.
    unsafe extern "C-unwind" fn guarded_gmatch_step(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua as a C function with the upvalues set by `guarded_gmatch`.
        unsafe {
            check_pattern(state, ffi::lua_upvalueindex(2));
            original(state, ffi::lua_upvalueindex(4), &GMATCH_STEP)(state)
        }
    }

    /// Raises "pattern too complex" (Lua 5.2's message) if matching the pattern at `index`
    /// could recurse deeper than the stack left allows. Lua 5.1's matcher recurses once per
    /// capture and per quantified item, with no limit of its own.
    ///
    /// # Safety
    ///
    /// `state` must be the running state, inside a C function call, and `index` acceptable.
    unsafe fn check_pattern(state: *mut ffi::lua_State, index: c_int) {
        // SAFETY: guaranteed by the caller; the pattern is read in place (a number is
        // converted to a string, as the original's `luaL_checklstring` would).
        unsafe {
            let kind = ffi::lua_type(state, index);
            if kind != ffi::LUA_TSTRING && kind != ffi::LUA_TNUMBER {
                return; // the original raises its argument error
            }
            let mut len = 0;
            let p = ffi::lua_tolstring(state, index, &mut len);
            let pattern = std::slice::from_raw_parts(p as *const u8, len);
            let depth = recursion_bound(pattern);
            if depth.saturating_mul(PATTERN_LEVEL) > stack_left() {
                ffi::luaL_error(state, c"pattern too complex".as_ptr());
            }
        }
    }

    /// An upper bound on how deeply Lua 5.1's `match` recurses for `pattern`: one level per
    /// parenthesis and per item followed by `?`, `*`, `+` or `-`.
    pub(super) fn recursion_bound(pattern: &[u8]) -> usize {
        // Lua 5.1 stops reading a pattern at its first zero byte.
        let end = pattern
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(pattern.len());
        let p = &pattern[..end];
        let mut depth = 0;
        let mut i = usize::from(p.first() == Some(&b'^'));
        while i < p.len() {
            match p[i] {
                b'(' | b')' => {
                    depth += 1;
                    i += 1;
                    continue;
                }
                b'%' => match p.get(i + 1) {
                    // `%bxy`, `%f[set]` and back-references take no quantifier.
                    Some(b'b') => {
                        i += 4;
                        continue;
                    }
                    Some(b'f') => {
                        i = if p.get(i + 2) == Some(&b'[') {
                            set_end(p, i + 2)
                        } else {
                            i + 2
                        };
                        continue;
                    }
                    Some(d) if d.is_ascii_digit() => {
                        i += 2;
                        continue;
                    }
                    _ => i += 2,
                },
                b'[' => i = set_end(p, i),
                _ => i += 1,
            }
            if matches!(p.get(i), Some(b'?' | b'*' | b'+' | b'-')) {
                depth += 1;
                i += 1;
            }
        }
        depth
    }

    /// The index just past the set that starts with the `[` at `start` (as Lua's `classEnd`).
    fn set_end(p: &[u8], start: usize) -> usize {
        let mut i = start + 1;
        if p.get(i) == Some(&b'^') {
            i += 1;
        }
        loop {
            let Some(&c) = p.get(i) else {
                return p.len(); // malformed: the original raises its error
            };
            i += 1;
            if c == b'%' {
                i += 1;
            }
            if i >= p.len() {
                return p.len();
            }
            if p[i] == b']' {
                return i + 1;
            }
        }
    }
}

#[cfg(any(feature = "luajit", feature = "luajit52"))]
mod luajit {
    //! LuaJIT: C calls that nest through coroutines.

    use std::ffi::c_int;

    use mlua::{ffi, Lua};

    use super::stack_left;

    /// Wraps the functions through which C calls nest without bound (`loadstring` is `load`
    /// under another name). Each wrapper checks the
    /// stack left, then tail-calls the function it wraps, so that argument errors still name
    /// the function as the caller knows it, with the caller's position.
    const GUARDS: &str = r#"
        local check, type = ...
        -- A VM made by a factory may lack a library: guard what is there.
        local gsub = string and string.gsub
        local load, loadstring = load, loadstring
        local resume = coroutine and coroutine.resume
        local wrap = coroutine and coroutine.wrap
        if gsub then
            string.gsub = function(...) check() return gsub(...) end
        end
        if load then
            _G.load = function(...) check() return load(...) end
        end
        if loadstring then
            _G.loadstring = function(...) check() return loadstring(...) end
        end
        if resume then
            coroutine.resume = function(...) check() return resume(...) end
        end
        if wrap then
            coroutine.wrap = function(f)
                if type(f) ~= "function" then
                    return wrap(f) -- its own argument error
                end
                local resume_wrapped = wrap(f)
                return function(...) check() return resume_wrapped(...) end
            end
        end
    "#;

    pub(super) fn install(lua: &Lua) -> mlua::Result<()> {
        // SAFETY: `exec_raw` runs the closure in a protected call; `lua_pushcfunction` leaves
        // the function as result.
        let check: mlua::Function =
            unsafe { lua.exec_raw((), |state| ffi::lua_pushcfunction(state, check_stack))? };
        let type_of = lua.globals().get::<mlua::Function>("type")?;
        static COMPILED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let name = "=[isle C stack guards]";
        crate::interrupt::load_own_chunk(lua, &COMPILED, GUARDS, name)?.call((check, type_of))
    }

    /// Raises "C stack overflow" (PUC Lua's message) once the thread's stack is in use down to
    /// the reserve, or [`LUAJIT_NESTING`](super::LUAJIT_NESTING) of it is.
    unsafe extern "C-unwind" fn check_stack(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua as a C function.
        unsafe {
            if stack_left() == 0 {
                ffi::lua_pushstring(state, c"C stack overflow".as_ptr());
                ffi::lua_error(state);
            }
            0
        }
    }
}

#[cfg(all(test, feature = "lua51"))]
mod tests {
    use super::lua51::recursion_bound;

    #[test]
    fn pattern_recursion_bound_counts_captures_and_quantified_items() {
        assert_eq!(recursion_bound(b"abc"), 0);
        assert_eq!(recursion_bound(b"^a?b*c+d-$"), 4);
        assert_eq!(recursion_bound(b"(a)(b)"), 4);
        assert_eq!(recursion_bound(b"%a*%d+"), 2);
        assert_eq!(recursion_bound(b"[%]*]*x"), 1);
        assert_eq!(recursion_bound(b"[^?]?"), 1);
        assert_eq!(recursion_bound(b"%b()*"), 0);
        assert_eq!(recursion_bound(b"%f[%w]%w+"), 1);
        assert_eq!(recursion_bound(b"(a)%1*"), 2);
        assert_eq!(recursion_bound(b"a?\0a?a?"), 1);
        assert_eq!(recursion_bound(&b"a?".repeat(1000)), 1000);
    }
}
