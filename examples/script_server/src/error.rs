//! Why a request got no result, and the HTTP status that says so.

use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mlua_isle::{IsleError, LuaErrorKind};

/// What went wrong with a `POST /run`: each outcome has one HTTP status, and a name sent as
/// the `kind` of the JSON error body.
///
/// # Examples
///
/// ```
/// use axum::http::StatusCode;
/// use script_server::ErrorKind;
///
/// assert_eq!(ErrorKind::QueueFull.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(ErrorKind::QueueFull.as_str(), "queue_full");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The body is not a JSON object with a string `script` (`400`).
    BadRequest,
    /// The script does not compile (`422`).
    Syntax,
    /// The script raised an error (`422`).
    Runtime,
    /// The script ran past its deadline (`422`).
    Timeout,
    /// The script ran out of memory under its limit (`422`).
    Memory,
    /// The script's result has no JSON form: a function, a cyclic or too deeply nested table
    /// (`422`).
    Conversion,
    /// Too many scripts are waiting already (`429`).
    QueueFull,
    /// The service is shutting down and takes no new scripts (`503`).
    ShuttingDown,
    /// The service itself failed (`500`).
    Internal,
}

impl ErrorKind {
    /// The HTTP status of the response.
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::http::StatusCode;
    ///
    /// assert_eq!(script_server::ErrorKind::Runtime.status(), StatusCode::UNPROCESSABLE_ENTITY);
    /// ```
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Syntax
            | ErrorKind::Runtime
            | ErrorKind::Timeout
            | ErrorKind::Memory
            | ErrorKind::Conversion => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The name sent as the error body's `kind`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(script_server::ErrorKind::Timeout.as_str(), "timeout");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Syntax => "syntax",
            ErrorKind::Runtime => "runtime",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Conversion => "conversion",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request: its kind and a message for the client. Sent as
/// `{"error": message, "kind": kind}` with the kind's status.
#[derive(Debug)]
pub(crate) struct ApiError {
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn shutting_down() -> Self {
        ApiError::new(ErrorKind::ShuttingDown, "the service is shutting down")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<IsleError> for ApiError {
    fn from(err: IsleError) -> Self {
        let kind = match &err {
            IsleError::Lua(lua) => match lua.kind() {
                LuaErrorKind::Syntax => ErrorKind::Syntax,
                LuaErrorKind::Runtime => ErrorKind::Runtime,
                LuaErrorKind::Memory => ErrorKind::Memory,
                LuaErrorKind::Conversion => ErrorKind::Conversion,
                _ => ErrorKind::Internal,
            },
            IsleError::Timeout => ErrorKind::Timeout,
            IsleError::Full => ErrorKind::QueueFull,
            IsleError::Shutdown => ErrorKind::ShuttingDown,
            _ => ErrorKind::Internal,
        };
        // A Lua error's message goes without its traceback.
        let message = match &err {
            IsleError::Lua(lua) => lua.message().to_owned(),
            other => other.to_string(),
        };
        ApiError::new(kind, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "kind": self.kind.as_str() });
        (self.kind.status(), Json(body)).into_response()
    }
}
