//! What requests report to [`tracing`] (the `tracing` feature): a span per request, opened on
//! the Lua thread when it starts, and events for the ways a request can be stopped.
//!
//! Everything is emitted with the target `mlua_isle`. The span is named `request` and has the
//! fields `isle` (the id of the isle, or pool member, that runs it), `request` (an id unique
//! in the process), `kind` (`eval`, `call`, `exec`, `coroutine_eval`, ...), `queue_wait_us`
//! (from submission to start), and, once it is resolved, `run_us` and `outcome` (`ok`,
//! `cancelled`, `timeout`, `lua_error`, `panic`, `shutdown`, `abandoned`, ...). Code the
//! request runs (host functions included) runs inside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::field::Empty;
use tracing::Span;

use crate::error::IsleError;

/// Ids of requests: unique in the process.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// The tracing state of one request, carried in its slot: nothing (one null pointer) unless
/// a subscriber wanted its span when it was submitted.
#[derive(Debug)]
pub(crate) struct Trace(Option<Box<RequestTrace>>);

impl Trace {
    /// A request of `kind` submitted now.
    pub(crate) fn new(kind: &'static str) -> Self {
        let wanted = tracing::enabled!(
            kind: tracing::metadata::Kind::SPAN,
            target: "mlua_isle",
            tracing::Level::INFO
        );
        Trace(wanted.then(|| Box::new(RequestTrace::new(kind))))
    }

    /// The request starts on isle `isle`: its span, to be entered while it runs.
    pub(crate) fn start(&self, isle: u64) -> Span {
        match &self.0 {
            Some(trace) => trace.start(isle),
            None => Span::none(),
        }
    }

    /// The request was resolved with `outcome` (see [`outcome`]).
    pub(crate) fn finished(&self, outcome: &'static str) {
        if let Some(trace) = &self.0 {
            trace.finished(outcome);
        }
    }
}

/// What is traced of a request whose span a subscriber wanted.
#[derive(Debug)]
struct RequestTrace {
    id: u64,
    kind: &'static str,
    submitted: Instant,
    /// Set on the Lua thread when the request starts.
    running: OnceLock<Running>,
}

#[derive(Debug)]
struct Running {
    span: Span,
    started: Instant,
}

impl RequestTrace {
    fn new(kind: &'static str) -> Self {
        RequestTrace {
            id: NEXT_REQUEST.fetch_add(1, Ordering::Relaxed),
            kind,
            submitted: Instant::now(),
            running: OnceLock::new(),
        }
    }

    fn start(&self, isle: u64) -> Span {
        let started = Instant::now();
        let span = tracing::info_span!(
            target: "mlua_isle",
            "request",
            isle,
            request = self.id,
            kind = self.kind,
            queue_wait_us = micros(started.saturating_duration_since(self.submitted)),
            run_us = Empty,
            outcome = Empty,
        );
        let _ = self.running.set(Running {
            span: span.clone(),
            started,
        });
        span
    }

    fn finished(&self, outcome: &'static str) {
        let Some(running) = self.running.get() else {
            // Resolved before it started: cancelled, expired or refused while queued.
            match outcome {
                "cancelled" => tracing::debug!(
                    target: "mlua_isle",
                    request = self.id,
                    kind = self.kind,
                    "request cancelled before it started"
                ),
                "timeout" => tracing::info!(
                    target: "mlua_isle",
                    request = self.id,
                    kind = self.kind,
                    "request deadline passed before it started"
                ),
                _ => {}
            }
            return;
        };
        let span = &running.span;
        span.record("run_us", micros(running.started.elapsed()));
        span.record("outcome", outcome);
        match outcome {
            "cancelled" => tracing::debug!(target: "mlua_isle", parent: span, "request cancelled"),
            "timeout" => {
                tracing::info!(target: "mlua_isle", parent: span, "request deadline passed")
            }
            _ => {}
        }
    }
}

/// How a request ended, as the span's `outcome` field gives it.
pub(crate) fn outcome<T>(result: &Result<T, IsleError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(err) => error_outcome(err),
    }
}

fn error_outcome(err: &IsleError) -> &'static str {
    match err {
        IsleError::Cancelled => "cancelled",
        IsleError::Timeout => "timeout",
        IsleError::Lua(_) => "lua_error",
        IsleError::Panic(_) => "panic",
        IsleError::Shutdown => "shutdown",
        IsleError::Abandoned => "abandoned",
        IsleError::Full => "full",
        _ => "error",
    }
}

/// Isle `isle` gave up on its running request, which would not stop; the request ends with
/// `err`.
pub(crate) fn hard_stop(isle: u64, err: &IsleError) {
    tracing::warn!(
        target: "mlua_isle",
        isle,
        outcome = error_outcome(err),
        "hard stop: a request did not stop within the grace period; the isle is abandoned"
    );
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
