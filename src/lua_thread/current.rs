//! What host functions can learn about the request they run in.
//!
//! A Rust function registered in the VM runs on the isle's Lua thread. The interrupt can stop
//! Lua code, not Rust code, so a host function that works for long should look here and stop
//! early when its request is cancelled or past its deadline.

use std::cell::RefCell;
use std::time::Instant;

use crate::core::token::CancelToken;
use crate::error::IsleError;

struct Current {
    token: CancelToken,
    deadline: Option<Instant>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Makes `token` and `deadline` visible to host functions until [`leave`] is called.
pub(crate) fn enter(token: CancelToken, deadline: Option<Instant>) {
    CURRENT.with_borrow_mut(|c| *c = Some(Current { token, deadline }));
}

/// Ends the request started by [`enter`] and hands its token back.
pub(crate) fn leave() -> Option<CancelToken> {
    CURRENT.with_borrow_mut(Option::take).map(|c| c.token)
}

/// The cancel token of the request running on this thread, if this is an isle's Lua thread
/// inside a request.
///
/// It is the request's own token (a child of any token the caller gave), so it is cancelled by
/// every way the request can be cancelled.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mlua_isle::{current_token, Isle};
///
/// let isle = Isle::spawn(|lua| {
///     // A host function that sleeps, but wakes up when its request is cancelled.
///     let nap = lua.create_function(|_, ms: u64| {
///         let token = current_token().expect("called inside a request");
///         Ok(token.wait_timeout(Duration::from_millis(ms)))
///     })?;
///     lua.globals().set("nap", nap)
/// })?;
/// let task = isle.spawn_eval::<bool>("return nap(60000)")?;
/// task.cancel();
/// assert!(task.wait().unwrap_err().is_cancelled());
/// assert!(current_token().is_none()); // not on an isle thread
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn current_token() -> Option<CancelToken> {
    CURRENT.with_borrow(|c| c.as_ref().map(|c| c.token.clone()))
}

/// The deadline of the request running on this thread, if it has one.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mlua_isle::{current_deadline, Isle};
///
/// let isle = Isle::spawn(|lua| {
///     let f = lua.create_function(|_, ()| Ok(current_deadline().is_some()))?;
///     lua.globals().set("has_deadline", f)
/// })?;
/// assert!(!isle.eval::<bool>("return has_deadline()")?);
/// let limited = isle.request().timeout(Duration::from_secs(60));
/// assert!(limited.eval::<bool>("return has_deadline()")?);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn current_deadline() -> Option<Instant> {
    CURRENT.with_borrow(|c| c.as_ref().and_then(|c| c.deadline))
}

/// Returns an error if the request running on this thread has been cancelled or is past its
/// deadline; `Ok(())` otherwise (also outside a request).
///
/// Call it in the loop of a long host function and propagate the error with `?`: the request
/// then ends with [`IsleError::Cancelled`] or [`IsleError::Timeout`].
///
/// # Errors
///
/// [`IsleError::Cancelled`] or [`IsleError::Timeout`].
///
/// # Examples
///
/// ```
/// use mlua_isle::{checkpoint, mlua, Isle};
///
/// let isle = Isle::spawn(|lua| {
///     let busy = lua.create_function(|_, ()| -> mlua::Result<()> {
///         loop {
///             checkpoint()?;
///             std::hint::spin_loop();
///         }
///     })?;
///     lua.globals().set("busy", busy)
/// })?;
/// let task = isle.spawn_eval::<()>("busy()")?;
/// task.cancel();
/// assert!(task.wait().unwrap_err().is_cancelled());
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn checkpoint() -> Result<(), IsleError> {
    CURRENT.with_borrow(|c| match c {
        Some(c) if c.token.is_cancelled() => Err(IsleError::Cancelled),
        Some(Current {
            deadline: Some(d), ..
        }) if Instant::now() >= *d => Err(IsleError::Timeout),
        _ => Ok(()),
    })
}

impl From<IsleError> for mlua::Error {
    fn from(err: IsleError) -> Self {
        mlua::Error::external(err)
    }
}
