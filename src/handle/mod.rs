//! What callers hold: the isle handles (`Isle`, `AsyncIsle` and its driver), the builder that
//! starts the Lua thread, requests, the tasks that carry their results, `Code`, and handles to
//! functions kept in a VM.
//!
//! May import from every layer below: `error`, `interrupt`, `core` and `lua_thread`.

#[cfg(feature = "tokio")]
pub(crate) mod async_isle;
#[cfg(feature = "tokio")]
pub(crate) mod async_task;
pub(crate) mod builder;
pub(crate) mod code;
pub(crate) mod function;
pub(crate) mod isle;
pub(crate) mod request;
pub(crate) mod task;
