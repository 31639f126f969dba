//! The error type of every isle operation.

use std::error::Error as StdError;
use std::fmt;

/// Why an isle request (or the isle itself) failed.
///
/// Every request resolves exactly once: with its value or with one of these. The variants a
/// method can return are listed in its `# Errors` section.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, IsleError, LuaErrorKind};
///
/// let isle = Isle::spawn(|_| Ok(()))?;
/// match isle.eval::<i64>("return 1 +") {
///     Err(IsleError::Lua(e)) => assert_eq!(e.kind(), LuaErrorKind::Syntax),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok::<(), IsleError>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum IsleError {
    /// The request's [`CancelToken`](crate::CancelToken) (or a parent of it) was cancelled before
    /// the request finished.
    Cancelled,
    /// The request's deadline passed before it finished.
    Timeout,
    /// The Lua code (or a host function it called) failed.
    Lua(LuaError),
    /// The `init` closure (or the VM factory) given to `spawn` failed or panicked; the inner
    /// error says how.
    Init(Box<IsleError>),
    /// Rust code running on the Lua thread for this request panicked; the payload's message is
    /// kept. The isle stays usable.
    Panic(String),
    /// The isle is shut down (or its Lua thread is gone), so the request was not run.
    Shutdown,
    /// The isle gave up on a request that did not stop within its grace period after being
    /// interrupted (a loop in a `__gc` finalizer, a host function ignoring cancellation, a long
    /// C function). It no longer accepts requests; its thread was left to end on its own.
    Abandoned,
    /// The request queue is full and the request was made with
    /// [`Request::try_enqueue`](crate::Request::try_enqueue), or from the isle's own thread,
    /// which must never wait for room.
    Full,
    /// A blocking call was made from the isle's own Lua thread; waiting there would deadlock.
    Reentrant,
    /// [`Isle::call`](crate::Isle::call) named a global that is not a function.
    NotAFunction {
        /// The global's name.
        name: String,
        /// The Lua type the global has instead (`"nil"` when it is unset).
        type_name: &'static str,
    },
    /// A [`FunctionHandle`](crate::FunctionHandle) was used on an isle other than the one
    /// that handed it out (another isle, or another member of a pool); nothing was run.
    ForeignFunction,
    /// The builder's settings were rejected before the thread was started.
    Config(&'static str),
    /// The operating system refused to start the Lua thread.
    Spawn(std::io::Error),
}

impl IsleError {
    /// Returns `true` for [`IsleError::Cancelled`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(mlua_isle::IsleError::Cancelled.is_cancelled());
    /// assert!(!mlua_isle::IsleError::Timeout.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self, IsleError::Cancelled)
    }

    /// Returns `true` for [`IsleError::Timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(mlua_isle::IsleError::Timeout.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, IsleError::Timeout)
    }

    /// Returns `true` for [`IsleError::Panic`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(mlua_isle::IsleError::Panic("boom".into()).is_panic());
    /// ```
    pub fn is_panic(&self) -> bool {
        matches!(self, IsleError::Panic(_))
    }

    /// Returns `true` for [`IsleError::Shutdown`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(mlua_isle::IsleError::Shutdown.is_shutdown());
    /// ```
    pub fn is_shutdown(&self) -> bool {
        matches!(self, IsleError::Shutdown)
    }

    /// The Lua failure, if this is [`IsleError::Lua`].
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Isle, LuaErrorKind};
    ///
    /// let isle = Isle::spawn(|_| Ok(()))?;
    /// let err = isle.eval::<()>("error('boom')").unwrap_err();
    /// assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Runtime);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn as_lua(&self) -> Option<&LuaError> {
        match self {
            IsleError::Lua(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for IsleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsleError::Cancelled => f.write_str("isle request cancelled"),
            IsleError::Timeout => f.write_str("isle request timed out"),
            IsleError::Lua(e) => fmt::Display::fmt(e, f),
            IsleError::Init(e) => write!(f, "isle initialization failed: {e}"),
            IsleError::Panic(msg) => write!(f, "panic on the lua thread: {msg}"),
            IsleError::Shutdown => f.write_str("isle is shut down"),
            IsleError::Abandoned => {
                f.write_str("isle abandoned: a request could not be interrupted in time")
            }
            IsleError::Full => f.write_str("isle request queue is full"),
            IsleError::Reentrant => {
                f.write_str("blocking isle call from the isle's own lua thread would deadlock")
            }
            IsleError::NotAFunction { name, type_name } => {
                write!(f, "global `{name}` is not a function (it is {type_name})")
            }
            IsleError::ForeignFunction => f.write_str("function handle belongs to another isle"),
            IsleError::Config(msg) => write!(f, "invalid isle configuration: {msg}"),
            IsleError::Spawn(e) => write!(f, "failed to start the lua thread: {e}"),
        }
    }
}

impl StdError for IsleError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            IsleError::Lua(e) => Some(e),
            IsleError::Init(e) => Some(&**e),
            IsleError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// What kind of Lua failure a [`LuaError`] is.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, LuaErrorKind};
///
/// let isle = Isle::spawn(|_| Ok(()))?;
/// let err = isle.eval::<i64>("return 'not a number'").unwrap_err();
/// assert_eq!(err.as_lua().unwrap().kind(), LuaErrorKind::Conversion);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LuaErrorKind {
    /// The code did not compile.
    Syntax,
    /// The code raised an error while running (including errors returned by host functions).
    Runtime,
    /// The VM ran out of memory, or past its [memory limit](crate::IsleBuilder::memory_limit).
    Memory,
    /// A value could not be converted between Lua and Rust (arguments or results).
    Conversion,
    /// Any other failure reported by mlua.
    Other,
}

impl fmt::Display for LuaErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LuaErrorKind::Syntax => "syntax",
            LuaErrorKind::Runtime => "runtime",
            LuaErrorKind::Memory => "memory",
            LuaErrorKind::Conversion => "conversion",
            LuaErrorKind::Other => "other",
        })
    }
}

/// A failure reported by Lua: its kind, message and (when Lua produced one) traceback.
///
/// The original [`mlua::Error`] is not kept because it is not `Send` in every mlua
/// configuration; its text is.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, LuaErrorKind};
///
/// let isle = Isle::spawn(|_| Ok(()))?;
/// let err = isle.eval::<()>("error('boom')").unwrap_err();
/// let lua = err.as_lua().unwrap();
/// assert_eq!(lua.kind(), LuaErrorKind::Runtime);
/// assert!(lua.message().ends_with("boom"));
/// assert!(lua.traceback().unwrap().contains("stack traceback"));
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LuaError {
    kind: LuaErrorKind,
    message: String,
    traceback: Option<String>,
    /// The table the error was raised with, converted.
    #[cfg(feature = "serde")]
    value: Option<serde_json::Value>,
}

impl LuaError {
    /// The kind of failure.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let err = isle.eval::<()>("x = ").unwrap_err();
    /// assert_eq!(err.as_lua().unwrap().kind(), mlua_isle::LuaErrorKind::Syntax);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn kind(&self) -> LuaErrorKind {
        self.kind
    }

    /// The error message, without the traceback.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let err = isle.eval::<()>("error('boom', 0)").unwrap_err();
    /// assert_eq!(err.as_lua().unwrap().message(), "boom");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The Lua stack traceback at the point of failure, when there is one.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let err = isle.eval::<()>("error('boom')").unwrap_err();
    /// assert!(err.as_lua().unwrap().traceback().is_some());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn traceback(&self) -> Option<&str> {
        self.traceback.as_deref()
    }

    /// The table the error was raised with (`error({ code = 42 })`), converted to JSON on the
    /// isle's thread; `None` for any other error.
    ///
    /// Available for errors that reach the request as they were raised: by `eval`, `call`,
    /// `call_function` (plain requests of every kind of isle and pool, and, on Lua 5.4 and 5.5,
    /// coroutine requests), including a table caught by `pcall` and raised again. Not for an
    /// error a host function passed on (mlua turns it into text first), nor for `exec`
    /// closures, which call Lua themselves.
    ///
    /// The table is read without running any of its code (raw reads, no metamethods) and
    /// leniently: functions, coroutines and userdata in it are left out, as is a table met
    /// again inside itself; an empty table is an empty object. A table nested deeper than the
    /// isle's [depth limit](crate::IsleBuilder::serde_depth), or whose keys JSON cannot have
    /// (a sparse array), has no value (the message still applies).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::Isle;
    ///
    /// let isle = Isle::spawn(|_| Ok(()))?;
    /// let err = isle.eval::<()>("error({ code = 42, msg = 'quota exceeded' })").unwrap_err();
    /// let lua = err.as_lua().unwrap();
    /// assert_eq!(lua.value(), Some(&serde_json::json!({ "code": 42, "msg": "quota exceeded" })));
    /// assert_eq!(lua.message(), "quota exceeded");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn value(&self) -> Option<&serde_json::Value> {
        self.value.as_ref()
    }

    /// The [`value`](Self::value) as a `T`: `None` when the error has no value, an error when
    /// the value does not fit `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::Isle;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Quota { code: u32 }
    ///
    /// let isle = Isle::spawn(|_| Ok(()))?;
    /// let err = isle.eval::<()>("error({ code = 42 })").unwrap_err();
    /// let quota: Quota = err.as_lua().unwrap().value_as().unwrap().unwrap();
    /// assert_eq!(quota.code, 42);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn value_as<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, serde_json::Error>> {
        self.value.as_ref().map(T::deserialize)
    }

    pub(crate) fn new(kind: LuaErrorKind, message: String, traceback: Option<String>) -> Self {
        LuaError {
            kind,
            message,
            traceback,
            #[cfg(feature = "serde")]
            value: None,
        }
    }

    /// Attaches what was read of the table the error was raised with.
    #[cfg(feature = "serde")]
    pub(crate) fn set_table(&mut self, message: Option<String>, value: Option<serde_json::Value>) {
        if let Some(message) = message {
            self.message = message;
        }
        self.value = value;
    }
}

impl fmt::Display for LuaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lua {} error: {}", self.kind, self.message)
    }
}

impl StdError for LuaError {}

const TRACEBACK_MARKER: &str = "\nstack traceback:";

/// The message of Lua's memory errors.
const MEMORY_ERROR_MESSAGE: &str = "not enough memory";

/// Splits a message that mlua's message handler suffixed with a traceback.
fn split_traceback(msg: &str) -> (String, Option<String>) {
    match msg.find(TRACEBACK_MARKER) {
        Some(at) => (msg[..at].to_owned(), Some(msg[at + 1..].to_owned())),
        None => (msg.to_owned(), None),
    }
}

impl From<mlua::Error> for LuaError {
    fn from(err: mlua::Error) -> Self {
        let mut traceback = None;
        let mut err = &err;
        // Callback errors wrap the real cause; keep the outermost traceback.
        loop {
            match err {
                mlua::Error::CallbackError {
                    traceback: t,
                    cause,
                } => {
                    traceback.get_or_insert_with(|| t.clone());
                    err = cause;
                }
                mlua::Error::BadArgument { cause, .. } => {
                    // The argument's name and position matter more than the bare cause.
                    let message = err.to_string();
                    let kind = match **cause {
                        mlua::Error::FromLuaConversionError { .. } => LuaErrorKind::Conversion,
                        _ => LuaErrorKind::Runtime,
                    };
                    return LuaError::new(kind, message, traceback);
                }
                _ => break,
            }
        }
        let (kind, message) = match err {
            mlua::Error::SyntaxError { message, .. } => (LuaErrorKind::Syntax, message.clone()),
            mlua::Error::RuntimeError(message) => {
                let (message, t) = split_traceback(message);
                if traceback.is_none() {
                    traceback = t;
                }
                // Lua 5.3's string buffers report a failed allocation as a runtime error.
                #[cfg(feature = "lua53")]
                if message.ends_with("not enough memory for buffer allocation") {
                    return LuaError::new(LuaErrorKind::Memory, message, traceback);
                }
                // A memory error raised again as an ordinary error (by `dofile` when the
                // parser ran out of memory, say): its message is Lua's memory error message
                // itself. Lua 5.4 and 5.5 raise such an error as a memory error again; the
                // others as a runtime error.
                if message == MEMORY_ERROR_MESSAGE {
                    return LuaError::new(LuaErrorKind::Memory, message, traceback);
                }
                (LuaErrorKind::Runtime, message)
            }
            mlua::Error::MemoryError(message) => (LuaErrorKind::Memory, message.clone()),
            mlua::Error::FromLuaConversionError { .. } => {
                (LuaErrorKind::Conversion, err.to_string())
            }
            #[cfg(feature = "serde")]
            mlua::Error::SerializeError(_) | mlua::Error::DeserializeError(_) => {
                (LuaErrorKind::Conversion, err.to_string())
            }
            mlua::Error::ExternalError(_) => (LuaErrorKind::Runtime, err.to_string()),
            other => (LuaErrorKind::Other, other.to_string()),
        };
        LuaError::new(kind, message, traceback)
    }
}

impl From<mlua::Error> for IsleError {
    fn from(err: mlua::Error) -> Self {
        IsleError::Lua(err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_sync_static() {
        fn check<T: Send + Sync + 'static + StdError>() {}
        check::<IsleError>();
        check::<LuaError>();
    }

    #[test]
    fn display_is_one_lowercase_line() {
        let all = [
            IsleError::Cancelled,
            IsleError::Timeout,
            IsleError::Shutdown,
            IsleError::Abandoned,
            IsleError::Full,
            IsleError::Reentrant,
            IsleError::Panic("boom".into()),
            IsleError::Init(Box::new(IsleError::Panic("x".into()))),
            IsleError::NotAFunction {
                name: "f".into(),
                type_name: "nil",
            },
            IsleError::ForeignFunction,
            IsleError::Config("queue capacity must be at least 1"),
            IsleError::Spawn(std::io::Error::other("no threads")),
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            assert!(s.starts_with(|c: char| c.is_lowercase()), "{s}");
        }
    }

    #[test]
    fn an_error_carrying_the_memory_error_message_is_a_memory_error() {
        let e: LuaError =
            mlua::Error::RuntimeError("not enough memory\nstack traceback:\n\t[C]: in ?".into())
                .into();
        assert_eq!(e.kind(), LuaErrorKind::Memory);
        assert_eq!(e.message(), "not enough memory");
        let e: LuaError = mlua::Error::RuntimeError("x:1: not enough memory".into()).into();
        assert_eq!(e.kind(), LuaErrorKind::Runtime);
    }

    #[test]
    fn runtime_error_is_split_from_traceback() {
        let e: LuaError =
            mlua::Error::RuntimeError("x:1: boom\nstack traceback:\n\t[C]: in ?".into()).into();
        assert_eq!(e.kind(), LuaErrorKind::Runtime);
        assert_eq!(e.message(), "x:1: boom");
        assert_eq!(e.traceback(), Some("stack traceback:\n\t[C]: in ?"));
    }
}
