//! [`Serde`]: typed arguments and results converted through serde, with a depth limit.

use std::fmt;
use std::ops::{Deref, DerefMut};

use mlua::{FromLua, IntoLua, Lua, LuaSerdeExt, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How deeply nested a value converted by [`Serde`] may be, unless
/// [`IsleBuilder::serde_depth`](crate::IsleBuilder::serde_depth) says otherwise: 128 tables
/// (or Rust containers), the limit `serde_json` applies when parsing.
///
/// # Examples
///
/// ```
/// assert_eq!(mlua_isle::DEFAULT_SERDE_DEPTH, 128);
/// ```
pub const DEFAULT_SERDE_DEPTH: usize = 128;

/// The depth limit of an isle's VM, kept as mlua app data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SerdeDepth(pub(crate) usize);

/// The depth limit in force in `lua`.
pub(crate) fn depth_limit(lua: &Lua) -> usize {
    lua.app_data_ref::<SerdeDepth>()
        .map_or(DEFAULT_SERDE_DEPTH, |depth| depth.0)
}

/// How Lua values are read into Rust types: mlua's defaults (functions, threads and userdata
/// are refused; a table that contains itself is refused; an empty table reads as a map when
/// the target type does not say which) with the isle's depth limit.
pub(crate) fn deserialize_options(depth: usize) -> mlua::serde::DeserializeOptions {
    mlua::serde::DeserializeOptions::new().recursion_limit(depth)
}

/// How Rust values are written as Lua values: sequences become tables carrying mlua's
/// [`array_metatable`](mlua::LuaSerdeExt::array_metatable) (so an empty `Vec` reads back as a
/// sequence), `None` and `()` become `nil` (not mlua's `null` light userdata, which is truthy
/// in Lua), and the isle's depth limit applies.
pub(crate) fn serialize_options(depth: usize) -> mlua::serde::SerializeOptions {
    mlua::serde::SerializeOptions::new()
        .recursion_limit(depth)
        .set_array_metatable(true)
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
}

/// A value converted to and from Lua through serde.
///
/// `Serde<T>` is an argument (`T: Serialize`) or a result (`T: DeserializeOwned`) wherever the
/// isle takes them generically: [`eval`](crate::Isle::eval), [`call`](crate::Isle::call), the
/// `spawn_*` and `coroutine_*` requests, [`call_function`](crate::Isle::call_function), the
/// [`AsyncIsle`](crate::AsyncIsle) and the pools. The conversion runs on the isle's thread,
/// as part of the request; a value that does not fit ends the request with
/// [`IsleError::Lua`](crate::IsleError::Lua) of kind
/// [`LuaErrorKind::Conversion`](crate::LuaErrorKind::Conversion).
///
/// - **One value.** As a result, `Serde<T>` takes the first value the code returns (further
///   ones are ignored, as for any single-value result); no value at all reads as `nil`, which
///   fits `Option<_>` (`None`) and `()`. As an argument it is one argument: a tuple or a struct
///   becomes one table. Pass several as a tuple of wrappers: `(Serde(a), Serde(b))`.
/// - **Tables.** A table with a positive length reads as a sequence, otherwise as a map (its
///   entries in `next` order); an empty table reads as whatever the target type wants (a
///   `serde_json::Value` gets an empty object unless the table carries mlua's
///   [`array_metatable`](mlua::LuaSerdeExt::array_metatable), as the sequences this wrapper
///   writes do). Functions, coroutines and userdata are refused.
/// - **Nil.** `None`, `()` and unit structs are written as `nil`, so optional fields are
///   simply absent in Lua; `nil` and mlua's `null` read back as `None`.
/// - **Depth.** Values nested more than [`DEFAULT_SERDE_DEPTH`] levels (see
///   [`IsleBuilder::serde_depth`](crate::IsleBuilder::serde_depth)), and tables that contain
///   themselves, are refused with a conversion error, in both directions, before the
///   conversion could exhaust the thread's stack.
/// - **Size.** A table reached twice converts twice, and a table with a length converts as
///   that many values, so a few kilobytes of Lua can stand for an unbounded value
///   (`t = { t, t }` forty times over; `{ [1] = 1, [2] = 1, [4] = 1, ..., [2^40] = 1 }`). A
///   result is first measured as it would convert (raw reads, no metamethods; the request's
///   cancel and deadline still apply) and refused with a conversion error past 262 144 table
///   entries (a table's length counting as well as its entries) or 16 MiB of strings.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, Serde};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Point { x: i64, y: i64 }
///
/// let isle = Isle::spawn(|lua| {
///     lua.load("function flip(p) return { x = p.y, y = p.x } end").exec()
/// })?;
/// let Serde(p) = isle.call::<Serde<Point>>("flip", Serde(Point { x: 1, y: 2 }))?;
/// assert_eq!(p, Point { x: 2, y: 1 });
///
/// let Serde(list) = isle.eval::<Serde<Vec<String>>>("{ 'a', 'b' }")?;
/// assert_eq!(list, ["a", "b"]);
/// let Serde(none) = isle.eval::<Serde<Option<Point>>>("nil")?;
/// assert_eq!(none, None);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serde<T>(pub T);

impl<T> Serde<T> {
    /// The wrapped value.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(mlua_isle::Serde(3).into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Serde<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Serde").field(&self.0).finish()
    }
}

impl<T> From<T> for Serde<T> {
    fn from(value: T) -> Self {
        Serde(value)
    }
}

impl<T> Deref for Serde<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Serde<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: DeserializeOwned> FromLua for Serde<T> {
    fn from_lua(value: Value, lua: &Lua) -> mlua::Result<Self> {
        let from = value.type_name();
        let refused = |message| mlua::Error::FromLuaConversionError {
            from,
            to: std::any::type_name::<T>().to_owned(),
            message: Some(message),
        };
        let depth = depth_limit(lua);
        super::budget::check(&value, depth, super::budget::Budget::VALUE).map_err(refused)?;
        lua.from_value_with(value, deserialize_options(depth))
            .map(Serde)
            .map_err(|err| {
                refused(match err {
                    mlua::Error::DeserializeError(message) => message,
                    other => other.to_string(),
                })
            })
    }
}

impl<T: Serialize> IntoLua for Serde<T> {
    fn into_lua(self, lua: &Lua) -> mlua::Result<Value> {
        let options = serialize_options(depth_limit(lua));
        lua.to_value_with(&self.0, options).map_err(|err| {
            let message = match err {
                mlua::Error::SerializeError(message) => message,
                other => other.to_string(),
            };
            let from = std::any::type_name::<T>();
            mlua::Error::SerializeError(format!("cannot convert {from} to a Lua value: {message}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_vm_uses_the_default_depth() {
        let lua = Lua::new();
        assert_eq!(depth_limit(&lua), DEFAULT_SERDE_DEPTH);
        lua.set_app_data(SerdeDepth(3));
        assert_eq!(depth_limit(&lua), 3);
    }

    #[test]
    fn depth_is_counted_in_tables_both_ways() {
        let lua = Lua::new();
        lua.set_app_data(SerdeDepth(3));
        let three: Value = lua.load("{{{}}}").eval().unwrap();
        let four: Value = lua.load("{{{{}}}}").eval().unwrap();
        assert!(Serde::<serde_json::Value>::from_lua(three, &lua).is_ok());
        let err = Serde::<serde_json::Value>::from_lua(four, &lua).unwrap_err();
        assert!(
            matches!(err, mlua::Error::FromLuaConversionError { .. }),
            "{err}"
        );
        let nested =
            |depth| (0..depth).fold(serde_json::json!(1), |inner, _| serde_json::json!([inner]));
        assert!(Serde(nested(3)).into_lua(&lua).is_ok());
        let err = Serde(nested(4)).into_lua(&lua).unwrap_err();
        assert!(matches!(err, mlua::Error::SerializeError(_)), "{err}");
    }

    #[test]
    fn none_is_written_as_nil_and_sequences_keep_their_kind() {
        let lua = Lua::new();
        let none = Serde(None::<i64>).into_lua(&lua).unwrap();
        assert!(none.is_nil());
        let empty = Serde(Vec::<i64>::new()).into_lua(&lua).unwrap();
        let back = Serde::<serde_json::Value>::from_lua(empty, &lua).unwrap();
        assert_eq!(back.0, serde_json::json!([]));
    }
}
