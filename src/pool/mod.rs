//! Pools: many isles behind one handle.
//!
//! The top layer: built on the isle handles and on one facility of the Lua thread (a *feed*, a
//! second queue it takes work from while a gate lets it); nothing below knows pools exist.
//!
//! - Dispatch: requests go into the pool's queue; each member's Lua thread takes the next one
//!   whenever it is idle, so no request waits behind a busy member while another is free.
//! - Checkout: a request that reserves the member it runs on and hands out a guard; it waits
//!   in the same queue, in turn, and a guard whose caller gave up is returned when dropped.
//! - Recycling and self-healing: the members' threads report each request's outcome; the
//!   supervisor thread replaces members the policy retires, and members that die or are
//!   given up on, off every caller's path.

#[cfg(feature = "tokio")]
mod async_pool;
mod builder;
mod checkout;
mod isle_pool;
mod member;
mod recycle;
mod shared;
mod stats;
mod supervisor;

#[cfg(feature = "tokio")]
pub use self::async_pool::{AsyncIslePool, AsyncIslePoolDriver, PooledAsyncIsle};
pub use self::builder::{IslePoolBuilder, DEFAULT_POOL_QUEUE_PER_MEMBER};
pub use self::checkout::PooledIsle;
pub use self::isle_pool::IslePool;
pub use self::recycle::Recycle;
pub use self::stats::{PoolStats, Recycled};
