//! How the `task` library is configured.

use std::time::Duration;

/// The `task` library: lightweight tasks, channels, `select` and timers for scripts; see
/// [`IsleBuilder::task_library`](crate::IsleBuilder::task_library).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mlua_isle::{Isle, TaskLibrary};
///
/// let isle = Isle::builder()
///     .task_library(TaskLibrary::new().time_slice(Some(Duration::from_millis(2))))
///     .spawn(|_| Ok(()))?;
/// let sum: i64 = isle.eval(r#"
///     local ch = task.channel(0)
///     task.spawn(function() for i = 1, 3 do ch:send(i) end ch:close() end)
///     local sum = 0
///     for v in ch:iter() do sum = sum + v end
///     return sum
/// "#)?;
/// assert_eq!(sum, 6);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLibrary {
    pub(crate) time_slice: Option<Duration>,
}

impl TaskLibrary {
    /// The time slice a task runs for before it is preempted, by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mlua_isle::TaskLibrary;
    ///
    /// assert_eq!(TaskLibrary::DEFAULT_TIME_SLICE, Duration::from_millis(4));
    /// ```
    pub const DEFAULT_TIME_SLICE: Duration = Duration::from_millis(4);

    /// The library with preemption after [`DEFAULT_TIME_SLICE`](Self::DEFAULT_TIME_SLICE).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::TaskLibrary;
    ///
    /// assert_eq!(TaskLibrary::new(), TaskLibrary::default());
    /// ```
    pub fn new() -> Self {
        TaskLibrary {
            time_slice: Some(Self::DEFAULT_TIME_SLICE),
        }
    }

    /// How long a task may run Lua code before it is made to yield so that its siblings run;
    /// `None` turns preemption off (tasks then switch only where they block or call
    /// `task.yield()`).
    ///
    /// Preemption needs a coroutine that can yield where it is stopped: Lua 5.3, 5.4, 5.5 and
    /// Luau. On Lua 5.1, 5.2 and LuaJIT tasks are cooperative whatever this says. Code that
    /// is not a task (the request's own chunk) is never preempted. Nothing is installed while
    /// a task runs: a watcher thread notices a task that has run a whole slice and interrupts
    /// it the way a cancel would, so CPU-bound tasks run at full speed.
    ///
    /// # Caveats
    ///
    /// A preempted task is like a thread: another task may run between any two instructions
    /// of its own Lua code (`n = n + 1` is a read and a write), though never inside a call to
    /// the library. Tasks that update shared state in several steps need a channel (or
    /// preemption turned off).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mlua_isle::TaskLibrary;
    ///
    /// let cooperative = TaskLibrary::new().time_slice(None);
    /// let fine = TaskLibrary::new().time_slice(Some(Duration::from_millis(1)));
    /// assert_ne!(cooperative, fine);
    /// ```
    pub fn time_slice(mut self, slice: Option<Duration>) -> Self {
        self.time_slice = slice.map(|s| s.max(Duration::from_micros(100)));
        self
    }
}

impl Default for TaskLibrary {
    fn default() -> Self {
        Self::new()
    }
}
