//! What runs on an isle's own thread: the worker loop that takes jobs from the queue, the VM
//! and its chunk cache, the guards and loaders installed into it, the executor for coroutine
//! requests, and what host functions learn about their request (`current_token`, `checkpoint`).
//!
//! May import from `error`, `convert`, `interrupt`, `core` and this folder, not from `handle`.

pub(crate) mod call;
pub(crate) mod current;
#[cfg(feature = "tokio")]
pub(crate) mod executor;
pub(crate) mod feed;
pub(crate) mod functions;
pub(crate) mod guards;
pub(crate) mod loaders;
#[cfg(not(feature = "luau"))]
pub(crate) mod stand_in;
pub(crate) mod vm;
pub(crate) mod worker;
