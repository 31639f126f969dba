//! The HTTP API: `POST /run` and `GET /stats`.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorKind};
use crate::scripts::Scripts;

/// The body of `POST /run`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    script: String,
    /// Missing is `null`.
    #[serde(default)]
    input: Value,
}

/// The body of a successful `POST /run`.
#[derive(Debug, Serialize)]
struct RunResponse {
    result: Value,
}

/// The service's routes.
pub(crate) fn router(scripts: Scripts) -> Router {
    Router::new()
        .route("/run", post(run))
        .route("/stats", get(stats))
        .with_state(scripts)
}

async fn run(
    State(scripts): State<Scripts>,
    body: Result<Json<RunRequest>, JsonRejection>,
) -> Result<Json<RunResponse>, ApiError> {
    let Json(request) =
        body.map_err(|rejection| ApiError::new(ErrorKind::BadRequest, rejection.body_text()))?;
    let result = scripts.run(request.script, request.input).await?;
    Ok(Json(RunResponse { result }))
}

async fn stats(State(scripts): State<Scripts>) -> Json<Value> {
    let stats = scripts.stats();
    Json(json!({
        "size": stats.size,
        "idle": stats.idle,
        "spares": stats.spares,
        "busy": stats.busy,
        "queued": stats.queued,
        "completed": stats.completed,
        "failed": stats.failed,
        "cancelled": stats.cancelled,
        "timed_out": stats.timed_out,
        "recycled": stats.recycled.total(),
        "replaced": stats.replaced,
        "abandoned": stats.abandoned,
        "failed_starts": stats.failed_starts,
    }))
}
