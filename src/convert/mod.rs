//! Conversions between Lua values and Rust data that go beyond mlua's own: typed values
//! through serde ([`Serde`]) and the structured value of an error raised with a table.
//!
//! Runs on the Lua thread (inside mlua's conversion traits and after a failed call), knows
//! nothing of requests or threads beyond the running request's [`checkpoint`](crate::checkpoint)
//! (a long conversion looks at it). Imports only `error`, that function and mlua; `interrupt`
//! and `lua_thread` build on it.

#[cfg(feature = "serde")]
pub(crate) mod budget;
#[cfg(feature = "serde")]
pub(crate) mod error_slot;
#[cfg(feature = "serde")]
pub(crate) mod error_value;
#[cfg(feature = "serde")]
pub(crate) mod serde;

#[cfg(feature = "serde")]
pub use self::serde::{Serde, DEFAULT_SERDE_DEPTH};
