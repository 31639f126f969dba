//! The thread boundary, free of Lua: the bounded queue and the state an isle's threads share,
//! request slots (each resolved exactly once), cancel tokens, waiting (spin, then park), the
//! watchdog that enforces deadlines and re-asserts stops, and the list of values given back to a
//! Lua thread by handles dropped elsewhere; with the `tracing` feature, what requests report.
//!
//! May import from `error`, `interrupt` (its Lua-free side: `Interrupter`, `StopWatch`) and this
//! folder, not from `lua_thread` or `handle`; tests may use any layer. One exception remains:
//! [`queue::Job::run`] (and so `Queued::run`) takes the Lua thread's `Worker`, and removing it
//! would need a job type that does not know what runs it.

pub(crate) mod isle_thread;
#[cfg(test)]
pub(crate) mod pause;
pub(crate) mod queue;
pub(crate) mod release;
pub(crate) mod slot;
pub(crate) mod token;
#[cfg(feature = "tracing")]
pub(crate) mod trace;
pub(crate) mod wait;
pub(crate) mod watchdog;
