//! Running one script on the pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlua_isle::{AsyncIslePool, PoolStats, Serde};
use serde_json::Value;

use crate::error::ApiError;

/// The pool the scripts run on and the deadline each gets; every handler has a clone.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pool: AsyncIslePool,
    timeout: Duration,
    /// Set once the service is shutting down: scripts arriving from then on are turned away.
    closed: Arc<AtomicBool>,
}

impl Scripts {
    pub(crate) fn new(pool: AsyncIslePool, timeout: Duration) -> Self {
        Scripts {
            pool,
            timeout,
            closed: Arc::default(),
        }
    }

    /// Runs `script` with `input` as its argument (`...`) and returns its first result.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future (hyper drops a handler's future when its client hangs up) drops
    /// the request's `AsyncTask`, which cancels the script, whether it is queued or running.
    pub(crate) async fn run(&self, script: String, input: Value) -> Result<Value, ApiError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ApiError::shutting_down());
        }
        // `eval_with` runs the script in the request's own environment (left to the garbage
        // collector when it ends), compiles source only (bytecode can break out of any
        // sandbox), and converts the input and the result on the Lua thread, depth-limited.
        let Serde(result) = self
            .pool
            .request()
            .timeout(self.timeout)
            .try_enqueue()
            .eval_with::<Serde<Value>>(script, Serde(input))
            .await?;
        Ok(result)
    }

    /// Turns away the scripts that arrive from now on; those already accepted still run.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// What the pool did so far.
    pub(crate) fn stats(&self) -> PoolStats {
        self.pool.stats()
    }
}
