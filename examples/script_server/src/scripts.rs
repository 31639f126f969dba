//! Running one script on the pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlua::chunk::ChunkMode;
use mlua_isle::{AsyncIslePool, PoolStats};
use serde_json::Value;

use crate::convert;
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
        let result = self
            .pool
            .request()
            .timeout(self.timeout)
            .try_enqueue()
            .exec(move |lua| {
                let input = convert::input_to_lua(lua, &input)?;
                // Source only: precompiled bytecode can break out of any sandbox.
                let chunk = lua
                    .load(script)
                    .set_name("=script")
                    .set_mode(ChunkMode::Text);
                let result: mlua::Value = chunk.call(input)?;
                convert::result_from_lua(lua, result)
            })
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
