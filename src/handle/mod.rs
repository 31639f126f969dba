#[cfg(feature = "tokio")]
pub(crate) mod async_isle;
#[cfg(feature = "tokio")]
pub(crate) mod async_task;
pub(crate) mod builder;
pub(crate) mod code;
pub(crate) mod isle;
pub(crate) mod request;
pub(crate) mod task;

// The items of the former `handle` module, until their paths are updated.
pub(crate) use crate::core::queue::*;
