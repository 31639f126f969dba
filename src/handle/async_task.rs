//! [`AsyncTask`]: the async handle to one queued or running request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::core::slot::ResultSlot;
use crate::core::token::CancelToken;
use crate::core::wait;
use crate::core::watchdog::Sleep;
use crate::error::IsleError;

/// A request submitted through an [`AsyncIsle`](crate::AsyncIsle); awaiting it yields the
/// request's result.
///
/// Awaiting it on the isle's own thread outside a coroutine request (for instance with a
/// `block_on` in a host function) would deadlock; it resolves [`IsleError::Reentrant`] instead.
///
/// Dropping an `AsyncTask` that has not finished cancels its request (a queued request then
/// never starts), so dropping the future of `isle.eval(..).await` mid-flight cancels too; call
/// [`detach`](AsyncTask::detach) to let the request run unobserved instead.
///
/// # Cancel safety
///
/// Awaiting is cancel safe in the sense of `tokio::select!`: polling does not consume the
/// result, so an `&mut task` raced against something else can be awaited again. Dropping the
/// task itself cancels the request.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mlua_isle::IsleError> {
/// let (isle, driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
/// let task = isle.spawn_eval::<i64>("return 6 * 7").await?;
/// assert_eq!(task.await?, 42);
/// driver.shutdown().await
/// # }
/// ```
#[must_use = "dropping an AsyncTask cancels its request; await it or call `detach`"]
pub struct AsyncTask<T> {
    slot: Arc<dyn ResultSlot<T>>,
    token: CancelToken,
    /// When a still-queued request expires; the task enforces it while awaited.
    deadline: Option<Instant>,
    expiry: Option<Pin<Box<Sleep>>>,
    isle_id: u64,
    /// Whether the first poll has waited briefly for the result (or should not).
    spun: bool,
    /// Set once the result is taken or the task detached: dropping then cancels nothing.
    released: bool,
}

impl<T> AsyncTask<T> {
    pub(crate) fn new(
        slot: Arc<dyn ResultSlot<T>>,
        token: CancelToken,
        deadline: Option<Instant>,
        isle_id: u64,
        spin: bool,
    ) -> Self {
        AsyncTask {
            slot,
            token,
            deadline,
            expiry: None,
            isle_id,
            spun: !spin,
            released: false,
        }
    }

    /// Cancels the request: a queued request never starts, a running one is interrupted. The
    /// result becomes [`IsleError::Cancelled`] unless the request had already finished.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_eval::<()>("while true do end").await?;
    /// task.cancel();
    /// assert!(task.await.unwrap_err().is_cancelled());
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The request's own cancel token (a child of the token it was given, if any).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_eval::<()>("while true do end").await?;
    /// let token = task.cancel_token();
    /// tokio::spawn(async move { token.cancel() });
    /// assert!(task.await.unwrap_err().is_cancelled());
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel_token(&self) -> CancelToken {
        self.token.clone()
    }

    /// Whether the request has finished, so that awaiting would not wait.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// let task = isle.spawn_eval::<()>("while true do end").await?;
    /// assert!(!task.is_finished());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.slot.is_ready()
    }

    /// Lets the request run to completion without anyone awaiting it.
    ///
    /// # Caveats
    ///
    /// A detached request is only stopped by its deadline or its token.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mlua_isle::IsleError> {
    /// # let (isle, _driver) = mlua_isle::AsyncIsle::spawn(|_| Ok(())).await?;
    /// isle.spawn_exec(|lua| lua.globals().set("flag", true)).await?.detach();
    /// assert!(isle.eval::<bool>("return flag").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn detach(mut self) {
        self.released = true;
    }
}

impl<T> Future for AsyncTask<T> {
    type Output = Result<T, IsleError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.slot.is_ready() && wait::would_block_isle(self.isle_id) {
            // Blocking on this from a plain request (e.g. with `block_on` in a host function)
            // would wait for the thread that is waiting.
            return Poll::Ready(Err(IsleError::Reentrant));
        }
        if !self.spun {
            // The isle usually answers within microseconds, far sooner than the executor
            // could park and wake this thread again: look for the result briefly first.
            self.spun = true;
            let slot = &self.slot;
            wait::spin_until(|| slot.is_ready());
        }
        loop {
            if let Poll::Ready(result) = self.slot.poll_take(cx) {
                self.released = true;
                // A second poll after completion (misuse) reports the isle as gone rather than
                // panicking.
                return Poll::Ready(result.unwrap_or(Err(IsleError::Shutdown)));
            }
            let Some(deadline) = self.deadline else {
                return Poll::Pending;
            };
            // Running requests are stopped by the isle; a queued one expires here.
            let expiry = self
                .expiry
                .get_or_insert_with(|| Box::pin(Sleep::until(deadline)));
            if expiry.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.slot.resolve_if_queued(IsleError::Timeout);
            self.deadline = None;
            self.expiry = None;
        }
    }
}

impl<T> Drop for AsyncTask<T> {
    fn drop(&mut self) {
        if !self.released && !self.slot.is_ready() {
            self.token.cancel();
        }
    }
}

impl<T> fmt::Debug for AsyncTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncTask")
            .field("finished", &self.slot.is_ready())
            .field("cancelled", &self.token.is_cancelled())
            .finish()
    }
}
