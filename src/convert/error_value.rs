//! The structured value of an error raised with a table (`error({ code = 42 })`).

use mlua::{Lua, LuaSerdeExt, Table, Value};

use super::serde::{depth_limit, deserialize_options};

/// What a failed request keeps of the table it failed with.
#[derive(Debug)]
pub(crate) struct TableError {
    /// The message to report instead of Lua's text for the table, if there is a better one.
    pub(crate) message: Option<String>,
    /// The table as JSON, if it converts.
    pub(crate) value: Option<serde_json::Value>,
}

/// Reads `table`, the error value of a failed request, without running any of its code: only
/// raw reads, no metamethods.
///
/// - The message: Lua's own text when the table's metatable has `__tostring` (that is what the
///   script asked `tostring` to show); otherwise its `message` field, or else its `msg` field,
///   when that is a string; otherwise Lua's text (`table: 0x...`).
/// - The value: the table converted as [`Serde`](super::Serde) converts results, but leniently
///   (functions, coroutines and userdata are left out; a table met again inside itself is left
///   out), within the isle's depth limit and a small budget
///   ([`Budget::ERROR`](super::budget::Budget::ERROR)). A table nested deeper, larger
///   converted, or with keys JSON cannot have, has no value.
pub(crate) fn read(lua: &Lua, table: Table) -> TableError {
    let has_tostring = table
        .metatable()
        .is_some_and(|mt| mt.raw_get::<Value>("__tostring").is_ok_and(|f| !f.is_nil()));
    let field = |name: &str| match table.raw_get::<Value>(name) {
        Ok(Value::String(s)) => Some(s.to_string_lossy()),
        _ => None,
    };
    let message = match has_tostring {
        true => None,
        false => field("message").or_else(|| field("msg")),
    };
    let depth = depth_limit(lua);
    let table = Value::Table(table);
    let options = deserialize_options(depth)
        .deny_unsupported_types(false)
        .deny_recursive_tables(false);
    let value = match super::budget::check(&table, depth, super::budget::Budget::ERROR) {
        Ok(()) => lua
            .from_value_with::<serde_json::Value>(table, options)
            .ok(),
        Err(_) => None,
    };
    TableError { message, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lua: &Lua, code: &str) -> Table {
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn message_comes_from_the_fields_unless_tostring_is_set() {
        let lua = Lua::new();
        let read_message = |code| read(&lua, table(&lua, code)).message;
        assert_eq!(
            read_message("{ message = 'a', msg = 'b' }").as_deref(),
            Some("a")
        );
        assert_eq!(read_message("{ msg = 'b' }").as_deref(), Some("b"));
        assert_eq!(read_message("{ message = 42 }"), None);
        assert_eq!(
            read_message(
                "setmetatable({ message = 'a' }, { __tostring = function() return 'x' end })"
            ),
            None
        );
    }

    #[test]
    fn value_is_lenient_but_bounded() {
        let lua = Lua::new();
        let value = read(
            &lua,
            table(
                &lua,
                "local t = { code = 1, f = print } t.self = t return t",
            ),
        );
        assert_eq!(value.value, Some(serde_json::json!({ "code": 1 })));
        let deep = read(
            &lua,
            table(&lua, "local t = {} for i = 1, 1e5 do t = {t} end return t"),
        );
        assert_eq!(deep.value, None);
    }

    #[test]
    fn reading_runs_no_metamethods() {
        let lua = Lua::new();
        let t = table(
            &lua,
            "return setmetatable({}, { __index = function() error('ran') end, \
             __pairs = function() error('ran') end })",
        );
        let read = read(&lua, t);
        assert_eq!(read.message, None);
        assert_eq!(read.value, Some(serde_json::json!({})));
    }
}
