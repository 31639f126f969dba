//! How a request calls its Lua function, and what it keeps of an error raised with a table.
//!
//! Without the `serde` feature this is mlua's [`Function::call`]. With it, the call is the same
//! protected call mlua makes, with a message handler that does what mlua's does (turn the error
//! into its text plus a traceback; let mlua's own error values through untouched) and also
//! notes a table raised as the error in a registry slot. The handler runs exactly where mlua's
//! would, so scripts see the same stack, depth and behaviour; a call that succeeds runs no
//! extra code. When the call fails with a table, the table is read on this thread after the
//! call (see [`error_value`](crate::convert::error_value)) and the [`LuaError`] carries it.
//!
//! Coroutine requests are resumed by mlua, whose handler cannot be replaced: on Lua 5.4 and
//! 5.5 their protected base frame (see `interrupt::protected_body`) notes the table in the same
//! slot. On the other versions a coroutine request's table error keeps Lua's text only.
//!
//! [`LuaError`]: crate::LuaError

use mlua::{FromLuaMulti, Function, IntoLuaMulti, Lua};

use crate::error::IsleError;

/// Calls `function` with `args` as a request does.
#[cfg(not(feature = "serde"))]
#[inline]
pub(crate) fn call<R: FromLuaMulti>(
    _lua: &Lua,
    function: &Function,
    args: impl IntoLuaMulti,
) -> Result<R, IsleError> {
    Ok(function.call(args)?)
}

/// Calls `function` with `args` as a request does.
#[cfg(feature = "serde")]
pub(crate) fn call<R: FromLuaMulti>(
    lua: &Lua,
    function: &Function,
    args: impl IntoLuaMulti,
) -> Result<R, IsleError> {
    match capture::call(lua, function, args) {
        Ok(results) => Ok(results),
        Err(err) => Err(IsleError::Lua(capture::failure(lua, err))),
    }
}

/// The error of a coroutine request, with the table it failed with where one was noted (Lua
/// 5.4 and 5.5: see the module's documentation).
#[cfg(feature = "tokio")]
pub(crate) fn coroutine_failure(lua: &Lua, err: mlua::Error) -> IsleError {
    #[cfg(all(feature = "serde", any(feature = "lua54", feature = "lua55")))]
    {
        IsleError::Lua(capture::failure(lua, err))
    }
    #[cfg(not(all(feature = "serde", any(feature = "lua54", feature = "lua55"))))]
    {
        let _ = lua;
        IsleError::from(err)
    }
}

/// Before a stretch of a coroutine request: nothing noted earlier belongs to its failure.
#[cfg(feature = "tokio")]
pub(crate) fn coroutine_stretch(lua: &Lua) {
    #[cfg(all(feature = "serde", any(feature = "lua54", feature = "lua55")))]
    crate::convert::error_slot::clear_in(lua);
    #[cfg(not(all(feature = "serde", any(feature = "lua54", feature = "lua55"))))]
    let _ = lua;
}

/// Prepares `lua` for [`call`]: the registry slot and what the handler compares with.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    #[cfg(feature = "serde")]
    {
        crate::convert::error_slot::install(lua, capture::message_handler)
    }
    #[cfg(not(feature = "serde"))]
    {
        let _ = lua;
        Ok(())
    }
}

#[cfg(feature = "serde")]
mod capture {
    use std::ffi::c_int;
    use std::ptr;

    use mlua::{ffi, FromLuaMulti, Function, IntoLuaMulti, Lua, Value};

    use crate::convert::error_slot::{self, is_mlua_failure, note};
    use crate::convert::error_value;
    use crate::error::LuaError;

    /// The message handler: mlua's, plus noting a table in the error slot.
    pub(super) unsafe extern "C-unwind" fn message_handler(state: *mut ffi::lua_State) -> c_int {
        // SAFETY: called by Lua as a message handler, with the error value on top.
        unsafe {
            // As mlua's: with no room even to look at the error, leave it as it is.
            if ffi::lua_checkstack(state, 3) == 0 {
                return 1;
            }
            note(state, -1);
            if is_mlua_failure(state, -1) {
                return 1;
            }
            // Luau calls the handler for memory errors too; mlua's skips them (building a
            // traceback needs memory).
            #[cfg(feature = "luau")]
            if ffi::lua_type(state, -1) == ffi::LUA_TSTRING {
                let text = std::ffi::CStr::from_ptr(ffi::lua_tostring(state, -1));
                if text.to_bytes() == b"not enough memory" {
                    return 1;
                }
            }
            let text = ffi::luaL_tolstring(state, -1, ptr::null_mut());
            if ffi::lua_checkstack(state, ffi::LUA_TRACEBACK_STACK) != 0 {
                ffi::luaL_traceback(state, state, text, 0);
                ffi::lua_remove(state, -2);
            }
            1
        }
    }

    /// Restores the stack top when dropped (also when a Rust panic carried by the error is
    /// resumed).
    struct KeepTop {
        state: *mut ffi::lua_State,
        top: c_int,
    }

    impl Drop for KeepTop {
        fn drop(&mut self) {
            // SAFETY: the state is alive for the call this guards; its stack was at `top`.
            unsafe { ffi::lua_settop(self.state, self.top) };
        }
    }

    /// [`Function::call`] with [`message_handler`].
    pub(super) fn call<R: FromLuaMulti>(
        lua: &Lua,
        function: &Function,
        args: impl IntoLuaMulti,
    ) -> mlua::Result<R> {
        lua.exec_raw_lua(|raw| {
            let state = raw.state();
            // SAFETY: the stack is used as mlua's `Function::call` uses it (room checked, top
            // restored by the guard); the pushed function is a live reference of this VM;
            // conversions go through mlua's own stack functions.
            unsafe {
                let _keep = KeepTop {
                    state,
                    top: ffi::lua_gettop(state),
                };
                if ffi::lua_checkstack(state, 3) == 0 {
                    return Err(mlua::Error::StackError);
                }
                // Nothing noted before this call belongs to it.
                error_slot::clear(state);
                error_slot::push_handler(state);
                let base = ffi::lua_gettop(state);
                raw.push(function)?;
                let nargs = args.push_into_stack_multi(raw)?;
                let status = ffi::lua_pcall(state, nargs, ffi::LUA_MULTRET, base);
                if status != ffi::LUA_OK {
                    return Err(pop_error(raw, status));
                }
                let nresults = ffi::lua_gettop(state) - base;
                if ffi::lua_checkstack(state, 1) == 0 {
                    return Err(mlua::Error::StackError);
                }
                R::from_stack_multi(nresults, raw)
            }
        })
    }

    /// The error a failed call left on top of the stack, as mlua makes it: its own error values
    /// as they are (a panic is resumed), anything else by the call's status.
    ///
    /// # Safety
    ///
    /// The error value is on top of `raw`'s stack, with a free slot.
    unsafe fn pop_error(raw: &mlua::state::RawLua, status: c_int) -> mlua::Error {
        let state = raw.state();
        // SAFETY: guaranteed by the caller.
        unsafe {
            if is_mlua_failure(state, -1) {
                return match raw.pop_value() {
                    Value::Error(err) => *err,
                    _ => mlua::Error::PreviouslyResumedPanic,
                };
            }
            let text = match ffi::lua_type(state, -1) {
                ffi::LUA_TSTRING | ffi::LUA_TNUMBER => {
                    let mut len = 0;
                    let data = ffi::lua_tolstring(state, -1, &mut len);
                    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
                    String::from_utf8_lossy(bytes).into_owned()
                }
                _ => "<unprintable error>".to_owned(),
            };
            ffi::lua_pop(state, 1);
            match status {
                ffi::LUA_ERRSYNTAX => mlua::Error::SyntaxError {
                    incomplete_input: text.ends_with("<eof>") || text.ends_with("'<eof>'"),
                    message: text,
                },
                ffi::LUA_ERRMEM => mlua::Error::MemoryError(text),
                #[cfg(any(feature = "lua52", feature = "lua53"))]
                ffi::LUA_ERRGCMM => mlua::Error::GarbageCollectorError(text),
                _ => mlua::Error::RuntimeError(text),
            }
        }
    }

    /// The [`LuaError`] of a failed call: with the table it failed with, if one was noted.
    pub(super) fn failure(lua: &Lua, err: mlua::Error) -> LuaError {
        let noted = error_slot::take(lua);
        let mut error = LuaError::from(err);
        // Only an error that reached the request as a plain Lua error can be the table.
        if let (Some(table), crate::error::LuaErrorKind::Runtime) = (noted, error.kind()) {
            let read = error_value::read(lua, table);
            error.set_table(read.message, read.value);
        }
        error
    }
}
