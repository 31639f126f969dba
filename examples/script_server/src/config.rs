//! What the service is started with: the pool's size and the limits every script runs under.

use std::time::Duration;

use mlua_isle::{
    AsyncIslePool, IsleBuilder, IslePoolBuilder, DEFAULT_POOL_QUEUE_PER_MEMBER,
    SANDBOX_MEMORY_LIMIT, SANDBOX_TIMEOUT,
};

/// The service's settings.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let config = script_server::Config {
///     members: 2,
///     timeout: Duration::from_millis(500),
///     ..script_server::Config::default()
/// };
/// assert_eq!(config.memory_limit, 64 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How many scripts run at once: the pool's members, one OS thread each (default: the
    /// available cores).
    pub members: usize,
    /// How long a script may take, counted from its arrival: time spent waiting for a free
    /// member counts (default [`SANDBOX_TIMEOUT`], 1 s).
    pub timeout: Duration,
    /// The memory a script's VM may use, in bytes (default [`SANDBOX_MEMORY_LIMIT`], 64 MiB).
    pub memory_limit: usize,
    /// How many scripts may wait for a free member; past that, requests are turned away with
    /// `429 Too Many Requests` (default: 256 per member).
    pub queue_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        let members = std::thread::available_parallelism().map_or(1, usize::from);
        Config {
            members,
            timeout: SANDBOX_TIMEOUT,
            memory_limit: SANDBOX_MEMORY_LIMIT,
            queue_capacity: DEFAULT_POOL_QUEUE_PER_MEMBER * members,
        }
    }
}

impl Config {
    /// The pool the scripts run on: sandboxed members under the memory limit, each request in
    /// a fresh environment of its own.
    pub(crate) fn pool(&self) -> IslePoolBuilder {
        let isle = IsleBuilder::new()
            .sandboxed()
            .memory_limit(self.memory_limit);
        AsyncIslePool::builder()
            .isle(isle)
            .size(self.members)
            .queue_capacity(self.queue_capacity)
    }
}
