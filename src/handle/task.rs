//! [`Task`]: the caller's handle to one queued or running request.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::slot::ResultSlot;
use crate::core::token::CancelToken;
use crate::core::wait;
use crate::error::IsleError;

/// A request submitted with one of the `spawn_*` methods, whose result can be waited for.
///
/// Dropping a `Task` that has not finished cancels its request (a queued request then never
/// starts); call [`detach`](Task::detach) to let it run to completion unobserved instead.
///
/// # Examples
///
/// ```
/// use mlua_isle::Isle;
///
/// let isle = Isle::spawn(|_| Ok(()))?;
/// let tasks: Vec<_> = (0..4)
///     .map(|i| isle.spawn_eval::<i64>(format!("return {i} * 10")))
///     .collect::<Result<_, _>>()?;
/// let results: Vec<i64> = tasks.into_iter().map(|t| t.wait()).collect::<Result<_, _>>()?;
/// assert_eq!(results, [0, 10, 20, 30]);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[must_use = "dropping a Task cancels its request; call `detach` to let it run"]
pub struct Task<T> {
    slot: Arc<dyn ResultSlot<T>>,
    token: CancelToken,
    /// When a still-queued request expires; the waiter enforces it.
    deadline: Option<Instant>,
    isle_id: u64,
    /// Set once the result is taken or the task detached: dropping then cancels nothing.
    released: bool,
}

impl<T> Task<T> {
    pub(crate) fn new(
        slot: Arc<dyn ResultSlot<T>>,
        token: CancelToken,
        deadline: Option<Instant>,
        isle_id: u64,
    ) -> Self {
        Task {
            slot,
            token,
            deadline,
            isle_id,
            released: false,
        }
    }

    /// Blocks until the request has finished and returns its result.
    ///
    /// # Errors
    ///
    /// Whatever the request ended with: [`IsleError::Lua`], [`IsleError::Cancelled`],
    /// [`IsleError::Timeout`], [`IsleError::Panic`], [`IsleError::Shutdown`],
    /// [`IsleError::NotAFunction`]; and [`IsleError::Reentrant`] when called on the isle's own
    /// Lua thread before the request has finished (it could never finish while that thread
    /// waits).
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_eval::<String>("return ('ab'):rep(2)")?;
    /// assert_eq!(task.wait()?, "abab");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn wait(mut self) -> Result<T, IsleError> {
        if !self.slot.is_ready() && wait::on_isle_thread(self.isle_id) {
            return Err(IsleError::Reentrant);
        }
        self.wait_until(None);
        self.take_result()
    }

    /// Waits at most `timeout` for the result. On timeout the task is handed back, still
    /// running: this is not a cancellation.
    ///
    /// # Errors
    ///
    /// `Err(task)` when the request has not finished in time; otherwise `Ok` of what
    /// [`wait`](Task::wait) returns.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread for up to `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_eval::<()>("while true do end")?;
    /// let task = task.wait_timeout(Duration::from_millis(10)).unwrap_err();
    /// task.cancel();
    /// assert!(task.wait().unwrap_err().is_cancelled());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn wait_timeout(self, timeout: Duration) -> Result<Result<T, IsleError>, Task<T>> {
        self.wait_deadline(wait::deadline_after(timeout))
    }

    fn wait_deadline(mut self, until: Option<Instant>) -> Result<Result<T, IsleError>, Task<T>> {
        if !self.slot.is_ready() && wait::on_isle_thread(self.isle_id) {
            return Ok(Err(IsleError::Reentrant));
        }
        if self.wait_until(until) {
            Ok(self.take_result())
        } else {
            Err(self)
        }
    }

    /// Returns the result if the request has finished, or hands the task back.
    ///
    /// # Errors
    ///
    /// `Err(task)` when the request has not finished; otherwise `Ok` of what
    /// [`wait`](Task::wait) returns.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let mut task = isle.spawn_eval::<i64>("return 5")?;
    /// let result = loop {
    ///     match task.try_wait() {
    ///         Ok(result) => break result,
    ///         Err(pending) => task = pending,
    ///     }
    /// };
    /// assert_eq!(result?, 5);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn try_wait(mut self) -> Result<Result<T, IsleError>, Task<T>> {
        self.expire_if_due();
        if self.slot.is_ready() {
            Ok(self.take_result())
        } else {
            Err(self)
        }
    }

    /// Whether the request has finished, so that [`wait`](Task::wait) would not block.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_eval::<()>("while true do end")?;
    /// assert!(!task.is_finished());
    /// task.cancel();
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn is_finished(&self) -> bool {
        self.expire_if_due();
        self.slot.is_ready()
    }

    /// Cancels the request: a queued request never starts, a running one is interrupted. The
    /// result becomes [`IsleError::Cancelled`] unless the request had already finished.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_eval::<()>("while true do end")?;
    /// task.cancel();
    /// assert!(task.wait().unwrap_err().is_cancelled());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The request's own cancel token: cancelling it (from any thread) is
    /// [`cancel`](Task::cancel). It is a child of the token the request was given, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// let task = isle.spawn_eval::<()>("while true do end")?;
    /// let token = task.cancel_token();
    /// std::thread::spawn(move || token.cancel()).join().unwrap();
    /// assert!(task.wait().unwrap_err().is_cancelled());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn cancel_token(&self) -> CancelToken {
        self.token.clone()
    }

    /// Lets the request run to completion without anyone waiting for it; its result is
    /// dropped on the Lua thread.
    ///
    /// # Caveats
    ///
    /// A detached request is only stopped by its deadline or its token. A detached infinite
    /// loop with neither keeps the Lua thread busy forever.
    ///
    /// # Examples
    ///
    /// ```
    /// # let isle = mlua_isle::Isle::spawn(|_| Ok(()))?;
    /// isle.spawn_exec(|lua| lua.globals().set("flag", true))?.detach();
    /// assert!(isle.eval::<bool>("return flag")?); // requests run in order
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn detach(mut self) {
        self.released = true;
    }

    /// Blocks until resolved or `until`; resolves a still-queued request whose deadline passed.
    fn wait_until(&self, until: Option<Instant>) -> bool {
        let mut expiry = self.deadline;
        loop {
            let stop = match (until, expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if self.slot.wait_until(stop) {
                return true;
            }
            let now = Instant::now();
            if expiry.is_some_and(|d| now >= d) {
                // Running requests are stopped by the Lua thread; queued ones end here.
                self.slot.resolve_if_queued(IsleError::Timeout);
                expiry = None;
            } else if until.is_some_and(|u| now >= u) {
                return false;
            }
        }
    }

    fn expire_if_due(&self) {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.slot.resolve_if_queued(IsleError::Timeout);
        }
    }

    fn take_result(&mut self) -> Result<T, IsleError> {
        self.released = true;
        self.slot
            .take()
            .expect("a finished request keeps its result until its task takes it")
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if !self.released && !self.slot.is_ready() {
            self.token.cancel();
        }
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("finished", &self.slot.is_ready())
            .field("cancelled", &self.token.is_cancelled())
            .finish()
    }
}
