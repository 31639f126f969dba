//! The chunk loaders Lua code gets while an isle refuses binary chunks.
//!
//! Lua does not verify bytecode: a crafted binary chunk can crash the process. Every way Lua
//! code could load one is therefore replaced by a text-only one:
//!
//! - `load`, `loadstring` (Lua 5.1, LuaJIT), `loadfile` and `dofile`;
//! - `require`, through the searcher of Lua modules (`package.searchers[2]`,
//!   `package.loaders[2]` in Lua 5.1 and LuaJIT), which otherwise loads a `.lua` file holding
//!   bytecode as readily as source;
//! - native code too: where the VM still has `package.loadlib` (only a VM built by
//!   [`IsleBuilder::factory`](crate::IsleBuilder::factory) can; mlua removes it otherwise), it
//!   and the searchers of C modules refuse to load anything.
//!
//! Each replacement is a [stand-in](crate::lua_thread::stand_in) that runs Lua's own function in its own
//! call with the mode forced to text, or reimplements it on top of Lua's text loading (Lua
//! 5.1's loaders have no mode, and `dofile` and the module searcher call the C API directly):
//! argument errors, messages and results stay the version's own. No original is kept as a
//! function value, so even a script with the `debug` library cannot call one through
//! upvalues; and a stand-in runs only an original recorded for it on the Rust side, so
//! swapping the upvalues (`debug.setupvalue`) leads to an error, not to another loader.
//!
//! Luau cannot load bytecode from Lua at all: nothing to replace there.

#[cfg(feature = "lua51")]
use std::ffi::c_void;
#[cfg(not(feature = "luau"))]
use std::ffi::{c_int, CStr};
#[cfg(not(feature = "luau"))]
use std::ptr;

#[cfg(not(feature = "luau"))]
use mlua::ffi;
use mlua::Lua;

#[cfg(not(feature = "luau"))]
use crate::lua_thread::stand_in::{is_plain_c_function, original, push_stand_in, Originals};

/// The originals of `load` (and of LuaJIT's `loadstring`, the same function).
#[cfg(not(feature = "luau"))]
static LOAD: Originals = Originals::new();
/// The originals of Lua 5.1's `loadstring`.
#[cfg(feature = "lua51")]
static LOADSTRING: Originals = Originals::new();
/// The originals of `loadfile`.
#[cfg(not(any(feature = "lua51", feature = "luau")))]
static LOADFILE: Originals = Originals::new();

/// What a refused binary chunk reports: Lua 5.2's message for a binary chunk under mode `"t"`
/// (Lua 5.1 has no modes; LuaJIT words its own).
#[cfg(feature = "lua51")]
const REFUSED: &CStr = c"attempt to load a binary chunk (mode is 't')";

/// What refused native code reports.
#[cfg(not(feature = "luau"))]
const NO_NATIVE_CODE: &CStr = c"C modules are not loaded while binary chunks are refused";

/// Replaces the chunk loaders reachable from Lua with text-only ones (see the module
/// documentation).
#[cfg(feature = "luau")]
pub(crate) fn forbid_binary_chunks(_lua: &Lua) -> mlua::Result<()> {
    Ok(())
}

/// Replaces the chunk loaders reachable from Lua with text-only ones (see the module
/// documentation).
#[cfg(not(feature = "luau"))]
pub(crate) fn forbid_binary_chunks(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: `exec_raw` runs the closure in a protected call on the main state; `install`
    // uses a few stack slots and reads every value's type before using it.
    unsafe { lua.exec_raw::<()>((), |state| install(state)) }
}

/// See [`forbid_binary_chunks`].
///
/// # Safety
///
/// `state` must be a valid state with room for six values, in a protected call.
#[cfg(not(feature = "luau"))]
unsafe fn install(state: *mut ffi::lua_State) {
    // SAFETY: guaranteed by the caller; every stand-in replaces a plain C function.
    unsafe {
        replace_global(state, c"load", text_load, &LOAD);
        #[cfg(feature = "lua51")]
        replace_global(state, c"loadstring", text_loadstring, &LOADSTRING);
        // LuaJIT's (and Lua 5.2's compatibility) `loadstring` is `load` under another name.
        #[cfg(not(feature = "lua51"))]
        replace_global(state, c"loadstring", text_load, &LOAD);
        // Lua 5.1's `loadfile` is reimplemented: no original to keep.
        #[cfg(feature = "lua51")]
        {
            ffi::lua_getglobal(state, c"loadfile".as_ptr());
            if is_plain_c_function(state, -1) {
                ffi::lua_pushcfunction(state, text_loadfile);
                ffi::lua_setglobal(state, c"loadfile".as_ptr());
            }
            ffi::lua_pop(state, 1);
        }
        #[cfg(not(feature = "lua51"))]
        replace_global(state, c"loadfile", text_loadfile, &LOADFILE);
        ffi::lua_getglobal(state, c"dofile".as_ptr());
        if is_plain_c_function(state, -1) {
            ffi::lua_pushcfunction(state, text_dofile);
            ffi::lua_setglobal(state, c"dofile".as_ptr());
        }
        ffi::lua_pop(state, 1);

        ffi::lua_getglobal(state, c"package".as_ptr());
        if ffi::lua_type(state, -1) == ffi::LUA_TTABLE {
            replace_searchers(state, ffi::lua_gettop(state));
        }
        ffi::lua_pop(state, 1);
    }
}

/// Replaces the global `name`, if it is one of Lua's own C functions, with `stand_in`, which
/// runs the originals recorded in `originals`.
///
/// # Safety
///
/// As [`install`].
#[cfg(not(feature = "luau"))]
unsafe fn replace_global(
    state: *mut ffi::lua_State,
    name: &CStr,
    stand_in: ffi::lua_CFunction,
    originals: &'static Originals,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        ffi::lua_getglobal(state, name.as_ptr());
        if is_plain_c_function(state, -1) {
            push_stand_in(state, stand_in, originals);
            ffi::lua_setglobal(state, name.as_ptr());
        } else {
            ffi::lua_pop(state, 1);
        }
    }
}

/// Replaces the searcher of Lua modules of the `package` table at `package`, and, if the VM
/// can load native code, `package.loadlib` and the searchers of C modules.
///
/// # Safety
///
/// As [`install`], with a table at `package`.
#[cfg(not(feature = "luau"))]
unsafe fn replace_searchers(state: *mut ffi::lua_State, package: c_int) {
    // SAFETY: guaranteed by the caller; the searchers table is checked to be one.
    unsafe {
        #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luajit52")))]
        let field = c"searchers";
        #[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
        let field = c"loaders";
        ffi::lua_getfield(state, package, field.as_ptr());
        let searchers = ffi::lua_gettop(state);
        if ffi::lua_type(state, searchers) != ffi::LUA_TTABLE {
            ffi::lua_pop(state, 1);
            return;
        }
        ffi::lua_rawgeti(state, searchers, 2);
        let lua_searcher = ffi::lua_iscfunction(state, -1) != 0;
        ffi::lua_pop(state, 1);
        if lua_searcher {
            ffi::lua_pushvalue(state, package);
            // Lua's own `package.searchpath` finds the file, with the version's own message
            // when there is none; Lua 5.1 has none, so the searcher looks itself.
            ffi::lua_getfield(state, package, c"searchpath".as_ptr());
            if ffi::lua_iscfunction(state, -1) == 0 {
                ffi::lua_pop(state, 1);
                ffi::lua_pushnil(state);
            }
            ffi::lua_pushcclosure(state, text_searcher, 2);
            ffi::lua_rawseti(state, searchers, 2);
        }

        ffi::lua_getfield(state, package, c"loadlib".as_ptr());
        let native = is_plain_c_function(state, -1);
        ffi::lua_pop(state, 1);
        if native {
            ffi::lua_pushcfunction(state, no_loadlib);
            ffi::lua_setfield(state, package, c"loadlib".as_ptr());
            // As mlua does in safe mode: one searcher that explains, none for all-in-one
            // libraries.
            let len = ffi::lua_rawlen(state, searchers) as ffi::lua_Integer;
            if len >= 3 {
                ffi::lua_pushcfunction(state, no_c_modules);
                ffi::lua_rawseti(state, searchers, 3);
            }
            if len >= 4 {
                for i in 4..len {
                    ffi::lua_rawgeti(state, searchers, i + 1);
                    ffi::lua_rawseti(state, searchers, i);
                }
                ffi::lua_pushnil(state);
                ffi::lua_rawseti(state, searchers, len);
            }
        }
        ffi::lua_pop(state, 1);
    }
}

/// `package.loadlib(path, funcname)`: fails as Lua's does where it cannot load libraries
/// (`nil`, a message, `"absent"`).
#[cfg(not(feature = "luau"))]
unsafe extern "C-unwind" fn no_loadlib(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; three values fit in `LUA_MINSTACK`.
    unsafe {
        ffi::luaL_checklstring(state, 1, ptr::null_mut());
        ffi::luaL_checklstring(state, 2, ptr::null_mut());
        ffi::lua_pushnil(state);
        ffi::lua_pushstring(state, NO_NATIVE_CODE.as_ptr());
        ffi::lua_pushstring(state, c"absent".as_ptr());
        3
    }
}

/// The searcher of C modules: explains why there are none.
#[cfg(not(feature = "luau"))]
unsafe extern "C-unwind" fn no_c_modules(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        ffi::lua_pushstring(state, c"\n\t".as_ptr());
        ffi::lua_pushstring(state, NO_NATIVE_CODE.as_ptr());
        ffi::lua_concat(state, 2);
        1
    }
}

/// Sets the mode argument at `idx` of a `load` or `loadfile` call to text only: the given
/// mode without `b` (`"t"` when none is given). A mode of the wrong type is left for the
/// original to report. The new mode is made by Lua (`luaL_gsub`): no Rust value is alive
/// when a memory error unwinds.
///
/// # Safety
///
/// `state` must be the running state, inside a C function call.
#[cfg(not(any(feature = "lua51", feature = "luau")))]
unsafe fn force_text_mode(state: *mut ffi::lua_State, idx: c_int) {
    // SAFETY: guaranteed by the caller; at most two values are pushed, within
    // `LUA_MINSTACK`. The given mode stays on the stack while `luaL_gsub` reads it.
    unsafe {
        let top = ffi::lua_gettop(state);
        let kind = if idx <= top {
            ffi::lua_type(state, idx)
        } else {
            ffi::LUA_TNONE
        };
        match kind {
            ffi::LUA_TNONE | ffi::LUA_TNIL => {
                ffi::lua_pushstring(state, c"t".as_ptr());
            }
            ffi::LUA_TSTRING | ffi::LUA_TNUMBER => {
                // Lua reads the mode as a C string: what follows a zero byte does not count.
                let given = ffi::lua_tolstring(state, idx, ptr::null_mut());
                ffi::luaL_gsub(state, given, c"b".as_ptr(), c"".as_ptr());
            }
            _ => return,
        }
        if top < idx {
            // The mode is at `top + 1`: move it to `idx`, with `nil` in between.
            ffi::lua_settop(state, idx);
            if top + 1 < idx {
                ffi::lua_pushvalue(state, top + 1);
                ffi::lua_replace(state, idx);
                ffi::lua_pushnil(state);
                ffi::lua_replace(state, top + 1);
            }
        } else {
            ffi::lua_replace(state, idx);
        }
    }
}

/// `load(chunk [, chunkname [, mode [, env]]])` (and `loadstring` where it is the same
/// function), upvalue 1 the original: binary chunks refused. Source given as a string that
/// does not start with the escape byte of bytecode loads under the caller's mode, as in plain
/// Lua; anything else (a reader, whose chunk is only known once read, LuaJIT's
/// `string.buffer`, any other value the original may accept) loads under the caller's mode
/// less `b`.
#[cfg(not(any(feature = "lua51", feature = "luau")))]
unsafe extern "C-unwind" fn text_load(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the upvalue set by `push_stand_in`. A value
    // the original does not take is left for it to report.
    unsafe {
        let text = match ffi::lua_type(state, 1) {
            ffi::LUA_TSTRING => !first_byte_marks_bytecode(state, 1),
            // Nothing to load: the original reports the missing argument as such.
            ffi::LUA_TNONE => true,
            _ => false,
        };
        if !text {
            force_text_mode(state, 3);
        }
        original(state, ffi::lua_upvalueindex(1), &LOAD)(state)
    }
}

/// `loadfile([filename [, mode [, env]]])`, upvalue 1 the original: binary chunks refused.
/// The file is not looked at twice (it could change in between): it loads under the caller's
/// mode less `b`.
#[cfg(not(any(feature = "lua51", feature = "luau")))]
unsafe extern "C-unwind" fn text_loadfile(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: as `text_load`.
    unsafe {
        force_text_mode(state, 2);
        original(state, ffi::lua_upvalueindex(1), &LOADFILE)(state)
    }
}

#[cfg(any(feature = "luajit", feature = "luajit52"))]
extern "C-unwind" {
    /// `luaL_loadfilex` from LuaJIT's `lauxlib.h` (not declared by mlua's bindings).
    #[link_name = "luaL_loadfilex"]
    fn luajit_loadfilex(
        state: *mut ffi::lua_State,
        filename: *const std::ffi::c_char,
        mode: *const std::ffi::c_char,
    ) -> c_int;
}

/// Loads the file `filename` (standard input when null) as a text chunk, leaving the function
/// or the error message on the stack; returns the status.
///
/// # Safety
///
/// `state` must be the running state, inside a C function call; `filename` null or a
/// string on the stack.
#[cfg(not(any(feature = "lua51", feature = "luau")))]
unsafe fn load_file_text(state: *mut ffi::lua_State, filename: *const std::ffi::c_char) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(any(feature = "luajit", feature = "luajit52"))]
        {
            luajit_loadfilex(state, filename, c"t".as_ptr())
        }
        #[cfg(not(any(feature = "luajit", feature = "luajit52")))]
        {
            ffi::luaL_loadfilex(state, filename, c"t".as_ptr())
        }
    }
}

/// `dofile([filename])`: Lua's own, loading text only.
#[cfg(not(feature = "luau"))]
unsafe extern "C-unwind" fn text_dofile(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; mirrors each version's `luaB_dofile`.
    unsafe {
        let filename = ffi::luaL_optlstring(state, 1, ptr::null(), ptr::null_mut());
        // Lua 5.1 returns what the chunk returned above all the arguments, later versions
        // keep only the first argument.
        #[cfg(not(feature = "lua51"))]
        ffi::lua_settop(state, 1);
        #[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
        let base = ffi::lua_gettop(state);
        if load_file_text(state, filename) != ffi::LUA_OK {
            ffi::lua_error(state);
        }
        #[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
        {
            ffi::lua_callk(state, 0, ffi::LUA_MULTRET, 0, Some(dofile_results));
            dofile_results(state, ffi::LUA_OK, 0)
        }
        #[cfg(feature = "lua52")]
        {
            ffi::lua_callk(state, 0, ffi::LUA_MULTRET, 0, Some(dofile_results));
            dofile_results(state)
        }
        #[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
        {
            ffi::lua_call(state, 0, ffi::LUA_MULTRET);
            ffi::lua_gettop(state) - base
        }
    }
}

/// The results of `dofile`, also as the continuation of a chunk that yielded.
#[cfg(any(feature = "lua53", feature = "lua54", feature = "lua55"))]
unsafe extern "C-unwind" fn dofile_results(
    state: *mut ffi::lua_State,
    _: c_int,
    _: ffi::lua_KContext,
) -> c_int {
    // SAFETY: called in `text_dofile`'s frame, whose argument slot lies below the results.
    unsafe { ffi::lua_gettop(state) - 1 }
}

/// The results of `dofile`, also as the continuation of a chunk that yielded.
#[cfg(feature = "lua52")]
unsafe extern "C-unwind" fn dofile_results(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called in `text_dofile`'s frame, whose argument slot lies below the results.
    unsafe { ffi::lua_gettop(state) - 1 }
}

/// The searcher of Lua modules, upvalue 1 the `package` table, upvalue 2 Lua's own
/// `package.searchpath` (`nil` on Lua 5.1): finds `name` on `package.path` as Lua's own
/// searcher does, and loads it as a text chunk.
#[cfg(not(feature = "luau"))]
unsafe extern "C-unwind" fn text_searcher(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the upvalues set by `replace_searchers`;
    // mirrors `searcher_Lua` (`loader_Lua` in Lua 5.1 and LuaJIT). The stack holds at most
    // six values.
    unsafe {
        let name = ffi::luaL_checklstring(state, 1, ptr::null_mut());
        ffi::lua_settop(state, 1);
        ffi::lua_getfield(state, ffi::lua_upvalueindex(1), c"path".as_ptr());
        if ffi::lua_tolstring(state, 2, ptr::null_mut()).is_null() {
            return ffi::luaL_error(state, c"'package.path' must be a string".as_ptr());
        }
        if ffi::lua_isnil(state, ffi::lua_upvalueindex(2)) == 0 {
            ffi::lua_pushvalue(state, ffi::lua_upvalueindex(2));
            ffi::lua_pushvalue(state, 1);
            ffi::lua_pushvalue(state, 2);
            ffi::lua_call(state, 2, 2);
            if ffi::lua_isnil(state, 3) != 0 {
                return 1; // where it looked
            }
            ffi::lua_settop(state, 3);
        } else if !find_file(state, name) {
            return 1; // where it looked
        }
        // [name, path, filename]
        let filename = ffi::lua_tolstring(state, 3, ptr::null_mut());
        if load_file_text(state, filename) != ffi::LUA_OK {
            return ffi::luaL_error(
                state,
                c"error loading module '%s' from file '%s':\n\t%s".as_ptr(),
                name,
                filename,
                ffi::lua_tolstring(state, -1, ptr::null_mut()),
            );
        }
        // Since Lua 5.2 the file name is passed on to the module.
        #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luajit52")))]
        {
            ffi::lua_pushvalue(state, 3);
            2
        }
        #[cfg(any(feature = "lua51", feature = "luajit", feature = "luajit52"))]
        {
            1
        }
    }
}

/// Lua 5.1's `findfile`: looks for `name` (dots turned into directory separators) in the
/// templates of the path at index 2, pushing the first readable file name and returning
/// `true`, or pushing the list of files tried and returning `false`.
///
/// Every string is built by Lua (`luaL_gsub`, `lua_concat`) and only borrowed by Rust: no
/// Rust value is alive when a memory error unwinds.
///
/// # Safety
///
/// `state` must be the running state inside `text_searcher`, with the stack `[name, path]`,
/// `name` the C string at index 1.
#[cfg(not(feature = "luau"))]
unsafe fn find_file(state: *mut ffi::lua_State, name: *const std::ffi::c_char) -> bool {
    // SAFETY: guaranteed by the caller; the path is borrowed from index 2, which holds it
    // throughout; at most seven values are on the stack.
    unsafe {
        const DIR_SEP: &CStr = if cfg!(windows) { c"\\" } else { c"/" };
        ffi::luaL_gsub(state, name, c".".as_ptr(), DIR_SEP.as_ptr()); // 3: name
        ffi::lua_pushstring(state, c"".as_ptr()); // 4: files tried
        let mut len = 0;
        let path = ffi::lua_tolstring(state, 2, &mut len);
        let path = std::slice::from_raw_parts(path as *const u8, len);
        for template in path.split(|&c| c == b';').filter(|t| !t.is_empty()) {
            ffi::lua_pushlstring(state, template.as_ptr() as *const _, template.len()); // 5
            let template = ffi::lua_tolstring(state, 5, ptr::null_mut());
            let name = ffi::lua_tolstring(state, 3, ptr::null_mut());
            ffi::luaL_gsub(state, template, c"?".as_ptr(), name); // 6: file name
            ffi::lua_replace(state, 5);
            let mut len = 0;
            let filename = ffi::lua_tolstring(state, 5, &mut len);
            if file::readable(std::slice::from_raw_parts(filename as *const u8, len)) {
                ffi::lua_replace(state, 3);
                ffi::lua_settop(state, 3);
                return true;
            }
            ffi::lua_pushstring(state, c"\n\tno file '".as_ptr());
            ffi::lua_insert(state, 5);
            ffi::lua_pushstring(state, c"'".as_ptr());
            ffi::lua_concat(state, 4); // 4: the files tried, this one added
        }
        ffi::lua_replace(state, 3);
        ffi::lua_settop(state, 3);
        false
    }
}

#[cfg(feature = "lua51")]
/// `load(func [, chunkname])`, upvalue 1 the original: the reader is wrapped so that a chunk
/// whose first byte marks bytecode is refused.
unsafe extern "C-unwind" fn text_load(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the upvalue set by `push_stand_in`. A
    // non-function argument is left for the original to report.
    unsafe {
        if ffi::lua_type(state, 1) == ffi::LUA_TFUNCTION {
            ffi::lua_pushvalue(state, 1);
            ffi::lua_pushboolean(state, 0);
            ffi::lua_pushcclosure(state, text_reader, 2);
            ffi::lua_replace(state, 1);
        }
        original(state, ffi::lua_upvalueindex(1), &LOAD)(state)
    }
}

#[cfg(feature = "lua51")]
/// The reader `load` gets: upvalue 1 the caller's reader, upvalue 2 whether the first piece
/// was seen. Lua 5.1 tells a binary chunk by its first byte.
unsafe extern "C-unwind" fn text_reader(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by `load` as a C function with the upvalues set by `text_load`; its
    // error ends the load, which returns it as `nil, message`.
    unsafe {
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_call(state, 0, 1);
        if ffi::lua_toboolean(state, ffi::lua_upvalueindex(2)) == 0 {
            ffi::lua_pushboolean(state, 1);
            ffi::lua_replace(state, ffi::lua_upvalueindex(2));
            if ffi::lua_type(state, -1) == ffi::LUA_TSTRING && first_byte_marks_bytecode(state, -1)
            {
                return ffi::luaL_error(state, REFUSED.as_ptr());
            }
        }
        1
    }
}

#[cfg(not(feature = "luau"))]
/// Whether the string at `idx` starts with the escape byte that starts bytecode.
///
/// # Safety
///
/// `idx` must hold a string.
unsafe fn first_byte_marks_bytecode(state: *mut ffi::lua_State, idx: c_int) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mut len = 0;
        let s = ffi::lua_tolstring(state, idx, &mut len);
        len > 0 && *s as u8 == ffi::LUA_SIGNATURE[0]
    }
}

#[cfg(feature = "lua51")]
/// `loadstring(string [, chunkname])`, upvalue 1 the original: bytecode refused.
unsafe extern "C-unwind" fn text_loadstring(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the upvalue set by `push_stand_in`;
    // arguments are checked as the original checks them before it loads anything.
    unsafe {
        ffi::luaL_checklstring(state, 1, ptr::null_mut());
        ffi::luaL_optlstring(state, 2, ptr::null(), ptr::null_mut());
        if ffi::lua_type(state, 1) == ffi::LUA_TSTRING && first_byte_marks_bytecode(state, 1) {
            ffi::lua_pushnil(state);
            ffi::lua_pushstring(state, REFUSED.as_ptr());
            return 2;
        }
        original(state, ffi::lua_upvalueindex(1), &LOADSTRING)(state)
    }
}

#[cfg(feature = "lua51")]
/// `loadfile([filename])`: Lua 5.1's own, loading text only.
unsafe extern "C-unwind" fn text_loadfile(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; mirrors `luaB_loadfile`.
    unsafe {
        let filename = ffi::luaL_optlstring(state, 1, ptr::null(), ptr::null_mut());
        if load_file_text(state, filename) == ffi::LUA_OK {
            return 1;
        }
        ffi::lua_pushnil(state);
        ffi::lua_insert(state, -2);
        2
    }
}

#[cfg(feature = "lua51")]
/// Lua 5.1's `luaL_loadfile` for text only: loads the file `filename` (standard input when
/// null), skipping a first line that starts with `#`, and leaves the function or the error
/// message on the stack; returns the status. A file that holds bytecode is refused.
///
/// The file is read once: whether it holds bytecode is decided on the first piece handed to
/// Lua (see [`file::read_chunk`]), so a file that changes meanwhile cannot slip bytecode in.
/// The file is closed, and every Rust value dropped, before any call that can raise.
///
/// # Safety
///
/// `state` must be the running state, inside a C function call; `filename` null or a C
/// string that stays valid meanwhile.
unsafe fn load_file_text(state: *mut ffi::lua_State, filename: *const std::ffi::c_char) -> c_int {
    /// How the load went, with nothing that needs dropping (the message stays on the
    /// stack, not on the heap, hence the size).
    #[allow(clippy::large_enum_variant)]
    enum Outcome {
        Loaded(c_int),
        Refused,
        Failed(&'static CStr, [u8; 256]),
    }
    // SAFETY: guaranteed by the caller; the reader's state outlives `lua_load`, which calls
    // the reader only during the call and raises nothing (it runs the parser protected).
    unsafe {
        let display = if filename.is_null() {
            c"stdin".as_ptr()
        } else {
            filename
        };
        // The chunk name is made, and may raise, before the file is opened.
        if filename.is_null() {
            ffi::lua_pushstring(state, c"=stdin".as_ptr());
        } else {
            ffi::lua_pushfstring(state, c"@%s".as_ptr(), filename);
        }
        let chunkname_at = ffi::lua_gettop(state);
        let outcome = 'read: {
            let name = if filename.is_null() {
                &[][..]
            } else {
                CStr::from_ptr(filename).to_bytes()
            };
            let mut chunk = match file::Chunk::open(name, filename.is_null()) {
                Ok(chunk) => chunk,
                Err(err) => break 'read Outcome::Failed(c"open", file::os_message(&err)),
            };
            if let Err(err) = chunk.skip_comment_line() {
                break 'read Outcome::Failed(c"read", file::os_message(&err));
            }
            let status = ffi::lua_load(
                state,
                file::read_chunk,
                &mut chunk as *mut file::Chunk as *mut c_void,
                ffi::lua_tostring(state, chunkname_at),
            );
            if let Some(err) = chunk.error.take() {
                Outcome::Failed(c"read", file::os_message(&err))
            } else if chunk.refused {
                Outcome::Refused
            } else {
                Outcome::Loaded(status)
            }
        };
        match outcome {
            Outcome::Loaded(status) => {
                ffi::lua_remove(state, chunkname_at);
                status
            }
            Outcome::Refused => {
                ffi::lua_settop(state, chunkname_at - 1);
                ffi::lua_pushstring(state, REFUSED.as_ptr());
                ffi::LUA_ERRSYNTAX
            }
            Outcome::Failed(what, message) => {
                ffi::lua_settop(state, chunkname_at - 1);
                ffi::lua_pushfstring(
                    state,
                    c"cannot %s %s: %s".as_ptr(),
                    what.as_ptr(),
                    display,
                    message.as_ptr(),
                );
                ffi::LUA_ERRFILE
            }
        }
    }
}

#[cfg(not(feature = "luau"))]
mod file {
    //! Files as Lua 5.1's `lauxlib` reads them.

    use std::ffi::{c_char, c_void};
    use std::io::{self, BufRead, BufReader, Read};

    use mlua::ffi;

    /// Whether the file can be opened for reading (Lua's `readable`).
    pub(super) fn readable(name: &[u8]) -> bool {
        std::fs::File::open(path(name)).is_ok()
    }

    /// A file name as the operating system takes it.
    fn path(name: &[u8]) -> std::path::PathBuf {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            std::ffi::OsStr::from_bytes(name).into()
        }
        #[cfg(not(unix))]
        {
            String::from_utf8_lossy(name).into_owned().into()
        }
    }

    /// The system's description of `err`, as `strerror` gives it: a C string, cut to fit.
    #[cfg_attr(not(feature = "lua51"), allow(dead_code))]
    pub(super) fn os_message(err: &io::Error) -> [u8; 256] {
        let message = err.to_string();
        let message = match message.rfind(" (os error ") {
            Some(at) => &message[..at],
            None => &message[..],
        };
        let mut out = [0; 256];
        let len = message.len().min(out.len() - 1);
        out[..len].copy_from_slice(&message.as_bytes()[..len]);
        out
    }

    /// A chunk being read from a file for `lua_load`.
    #[cfg_attr(not(feature = "lua51"), allow(dead_code))]
    pub(super) struct Chunk {
        source: BufReader<Box<dyn Read>>,
        /// A newline that stands for a skipped first line, keeping line numbers right.
        newline: bool,
        /// The piece handed to Lua last.
        piece: Vec<u8>,
        /// A piece read but held back behind the newline.
        held: Vec<u8>,
        /// Whether the first piece of the chunk was looked at.
        started: bool,
        /// Whether the end was reached (or the chunk refused): nothing more is read.
        done: bool,
        /// Whether the chunk started like bytecode and was cut short.
        pub(super) refused: bool,
        /// The read error that ended the chunk early.
        pub(super) error: Option<io::Error>,
    }

    #[cfg_attr(not(feature = "lua51"), allow(dead_code))]
    impl Chunk {
        pub(super) fn open(name: &[u8], stdin: bool) -> io::Result<Chunk> {
            let source: Box<dyn Read> = if stdin {
                Box::new(io::stdin())
            } else {
                Box::new(std::fs::File::open(path(name))?)
            };
            Ok(Chunk {
                source: BufReader::new(source),
                newline: false,
                piece: Vec::new(),
                held: Vec::new(),
                started: false,
                done: false,
                refused: false,
                error: None,
            })
        }

        /// Skips a first line that starts with `#` (as Lua does for `#!` lines). What comes
        /// next is judged by [`read_chunk`], on the bytes it hands to Lua.
        pub(super) fn skip_comment_line(&mut self) -> io::Result<()> {
            match self.fill()? {
                None => self.done = true,
                Some(b'#') => {
                    self.newline = true;
                    let mut line = Vec::new();
                    self.source.read_until(b'\n', &mut line)?;
                    if line.last() != Some(&b'\n') {
                        self.done = true;
                    }
                }
                Some(_) => {}
            }
            Ok(())
        }

        /// The first byte buffered, reading if needed; `None` at the end.
        fn fill(&mut self) -> io::Result<Option<u8>> {
            loop {
                match self.source.fill_buf() {
                    Ok(buf) => return Ok(buf.first().copied()),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
        }

        /// The next piece of the file, empty at the end (which is then final).
        fn next_piece(&mut self) -> Vec<u8> {
            if !self.held.is_empty() {
                return std::mem::take(&mut self.held);
            }
            if self.done {
                return Vec::new();
            }
            let piece = loop {
                match self.source.fill_buf() {
                    Ok(buf) => break buf.to_vec(),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        self.error = Some(err);
                        break Vec::new();
                    }
                }
            };
            self.source.consume(piece.len());
            if piece.is_empty() {
                self.done = true;
            }
            piece
        }
    }

    /// The `lua_Reader` of a [`Chunk`]. Lua tells a binary chunk by the first byte it is
    /// handed: the first piece that holds one is checked here, and if it starts like bytecode
    /// the chunk ends before it (Lua then parses an empty text chunk, which the caller
    /// replaces with the refusal). The end of the file is final: nothing is read after it.
    #[cfg_attr(not(feature = "lua51"), allow(dead_code))]
    pub(super) unsafe extern "C-unwind" fn read_chunk(
        _: *mut ffi::lua_State,
        data: *mut c_void,
        size: *mut usize,
    ) -> *const c_char {
        // SAFETY: `data` is the `Chunk` that `load_file_text` passed to `lua_load`, alive and
        // not otherwise borrowed during the call; the returned piece stays valid until the
        // next call. Nothing here calls Lua.
        unsafe {
            let chunk = &mut *(data as *mut Chunk);
            let mut piece = chunk.next_piece();
            if !chunk.started && !piece.is_empty() {
                chunk.started = true;
                if piece[0] == ffi::LUA_SIGNATURE[0] {
                    chunk.refused = true;
                    chunk.done = true;
                    piece.clear();
                }
            }
            if !piece.is_empty() && std::mem::take(&mut chunk.newline) {
                chunk.held = piece;
                piece = b"\n".to_vec();
            }
            chunk.piece = piece;
            *size = chunk.piece.len();
            if chunk.piece.is_empty() {
                std::ptr::null()
            } else {
                chunk.piece.as_ptr() as *const c_char
            }
        }
    }
}

#[cfg(all(test, not(feature = "luau")))]
mod tests {
    use mlua::Function;

    use super::*;
    use crate::lua_thread::vm::VmSource;

    /// A fresh VM with the text-only loaders.
    fn text_only() -> Lua {
        let lua = VmSource::default().create(None).unwrap();
        forbid_binary_chunks(&lua).unwrap();
        lua
    }

    #[test]
    fn load_refuses_binary_chunks_from_strings_and_readers() {
        let lua = text_only();
        let (from_string, from_reader): (Option<Function>, Option<Function>) = lua
            .load(
                r#"
                local dumped = string.dump(function() return 1 end)
                local sent = false
                local function reader()
                    if sent then return nil end
                    sent = true
                    return dumped
                end
                return (loadstring or load)(dumped), load(reader)
                "#,
            )
            .eval()
            .unwrap();
        assert!(from_string.is_none() && from_reader.is_none());
    }

    #[test]
    fn load_still_loads_text_from_strings_and_readers() {
        let lua = text_only();
        let n: i64 = lua
            .load(
                r#"
                local parts = {"return ", "1"}
                local i = 0
                local f = load(function() i = i + 1; return parts[i] end)
                return (loadstring or load)('return 7')() + f()
                "#,
            )
            .eval()
            .unwrap();
        assert_eq!(n, 8);
    }

    #[test]
    #[cfg(not(feature = "lua51"))]
    fn load_keeps_its_mode_and_environment_arguments() {
        let lua = text_only();
        let n: i64 = lua
            .load("return load('return x', 'c', 'bt', {x = 1})() + load('return 2', 'c', 't')()")
            .eval()
            .unwrap();
        assert_eq!(n, 3);
        // A text chunk under mode "b" is refused, as Lua refuses it.
        let (f, err): (Option<Function>, String) = lua
            .load("return load('return 1', 'c', 'b')")
            .eval()
            .unwrap();
        assert!(f.is_none());
        assert!(err.contains("mode"), "{err}");
    }
}
