//! JSON to Lua and back, on the Lua thread: one function per direction.

use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt};
use serde_json::Value;

/// The request's input as the Lua value the script receives.
///
/// JSON `null` becomes `nil` (so a `null` in an array leaves a hole, and an object's `null`
/// member is absent); arrays keep a metatable that marks them as arrays, so that an empty one
/// comes back as `[]`.
pub(crate) fn input_to_lua(lua: &Lua, input: &Value) -> mlua::Result<mlua::Value> {
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.to_value_with(input, options)
}

/// The script's result as JSON.
///
/// # Errors
///
/// A conversion error ([`mlua::Error::FromLuaConversionError`]) for a value JSON cannot
/// represent: a function, a coroutine, a userdata, a table nested too deeply or containing
/// itself.
pub(crate) fn result_from_lua(lua: &Lua, result: mlua::Value) -> mlua::Result<Value> {
    let from = result.type_name();
    lua.from_value(result)
        .map_err(|err| mlua::Error::FromLuaConversionError {
            from,
            to: "JSON".to_owned(),
            message: Some(err.to_string()),
        })
}
