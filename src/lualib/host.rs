//! Channels between Rust and the tasks of an isle's scripts.
//!
//! Each channel is made on the Lua thread (in `init`, or in a request's closure) and has a
//! Rust end, which is `Send` and works from any thread, sync or async, and a Lua end, a value
//! to hand to scripts (set it as a global, return it, pass it to a function):
//!
//! - [`channel_to_lua`]: Rust sends with a [`Sender`], scripts receive (`recv`, `try_recv`,
//!   `for v in ch`, and as a `recv` case of `task.select`).
//! - [`channel_from_lua`]: scripts send (`send`, `try_send`), Rust receives with a
//!   [`Receiver`].
//! - [`request_channel`]: Rust asks with a [`Requester`] and waits for the answer; scripts
//!   receive requests (`req.value`) and answer them (`req:reply(v)` or `req:reject(msg)`).
//!   A request its script's request ended without answering resolves with
//!   [`RequestError::Unanswered`] at once.
//!
//! Values cross as Rust values (`Send`), converted to and from Lua on the Lua thread. The
//! isle's `task` library must be installed ([`IsleBuilder::task_library`]).
//!
//! Closing either end, or dropping every Rust end, wakes the other side. When the isle closes
//! (shut down, or its last handle dropped), the Lua ends read as closed once empty, so a
//! script looping over one ends instead of holding the shutdown up.
//!
//! [`IsleBuilder::task_library`]: crate::IsleBuilder::task_library
//!
//! # Examples
//!
//! ```
//! use std::sync::mpsc;
//! use mlua_isle::{host, Isle, TaskLibrary};
//!
//! let (tx, rx) = mpsc::channel();
//! let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(move |lua| {
//!     let (to_lua, inbox) = host::channel_to_lua::<i64>(lua, 16)?;
//!     let (from_lua, outbox) = host::channel_from_lua::<i64>(lua, 16)?;
//!     lua.globals().set("inbox", inbox)?;
//!     lua.globals().set("outbox", outbox)?;
//!     tx.send((to_lua, from_lua)).unwrap();
//!     Ok(())
//! })?;
//! let (to_lua, from_lua) = rx.recv().unwrap();
//! let serving = isle.spawn_exec(|lua| {
//!     lua.load("for v in inbox do outbox:send(v * v) end").exec()
//! })?;
//! for i in 1..=3 {
//!     to_lua.send_blocking(i).unwrap();
//!     assert_eq!(from_lua.recv_blocking().unwrap(), i * i);
//! }
//! drop(to_lua); // the script's loop ends
//! serving.wait()?;
//! # Ok::<(), mlua_isle::IsleError>(())
//! ```

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mlua::{
    FromLua, Function, IntoLua, Lua, MultiValue, RegistryKey, Table, UserData, UserDataMethods,
    Value,
};

use crate::interrupt::Interrupter;

/// What the Lua ends need from the isle: whom to wake, and the Lua wrappers of `task.lua`.
struct HostContext {
    interrupter: Arc<Interrupter>,
    /// `wrap(userdata, kind)`: the Lua end of a channel around its userdata.
    wrap: RegistryKey,
}

/// Keeps what host channels need in `lua`; called by the library's installation.
pub(super) fn install(
    lua: &Lua,
    interrupter: &Arc<Interrupter>,
    wrap: Function,
) -> mlua::Result<()> {
    let wrap = lua.create_registry_value(wrap)?;
    lua.set_app_data(HostContext {
        interrupter: interrupter.clone(),
        wrap,
    });
    Ok(())
}

fn context(lua: &Lua) -> mlua::Result<(Arc<Interrupter>, Function)> {
    let context = lua.app_data_ref::<HostContext>().ok_or_else(|| {
        mlua::Error::runtime("host channels need the task library (IsleBuilder::task_library)")
    })?;
    let wrap = lua.registry_value::<Function>(&context.wrap)?;
    Ok((context.interrupter.clone(), wrap))
}

/// The Lua end of a channel around its userdata `end`: an empty table whose metatable refuses
/// new fields (what it holds stays inside the library); on Luau, read-only for `rawset` too.
fn wrap_end(wrap: &Function, end: mlua::AnyUserData, kind: &str) -> mlua::Result<Table> {
    let table: Table = wrap.call((end, kind))?;
    #[cfg(feature = "luau")]
    table.set_readonly(true);
    Ok(table)
}

fn check_capacity(capacity: usize) -> mlua::Result<()> {
    if capacity == 0 {
        return Err(mlua::Error::runtime(
            "a host channel needs a capacity of at least 1",
        ));
    }
    Ok(())
}

// --------------------------------------------------------------------------------------------
// Errors

/// The channel is closed: the value could not be sent and comes back.
///
/// # Examples
///
/// ```
/// let err = mlua_isle::host::SendError(5);
/// assert_eq!(err.to_string(), "sending on a closed host channel");
/// assert_eq!(err.0, 5);
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sending on a closed host channel")
    }
}

impl<T> std::error::Error for SendError<T> {}

/// Why [`Sender::try_send`] did not send; the value comes back.
///
/// # Examples
///
/// ```
/// let err = mlua_isle::host::TrySendError::Full(1);
/// assert_eq!(err.to_string(), "host channel is full");
/// assert_eq!(err.into_inner(), 1);
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySendError<T> {
    /// No room now.
    Full(T),
    /// The channel is closed.
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(mlua_isle::host::TrySendError::Closed("x").into_inner(), "x");
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Closed(v) => v,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("host channel is full"),
            TrySendError::Closed(_) => f.write_str("sending on a closed host channel"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// Why a receive returned nothing.
///
/// # Examples
///
/// ```
/// use mlua_isle::host::RecvError;
///
/// assert_eq!(RecvError::Closed.to_string(), "host channel is closed and empty");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// Nothing is there now ([`Receiver::try_recv`]).
    Empty,
    /// Closed, and every value sent was received.
    Closed,
    /// The wait ran out of time ([`Receiver::recv_timeout`]).
    Timeout,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Empty => f.write_str("host channel is empty"),
            RecvError::Closed => f.write_str("host channel is closed and empty"),
            RecvError::Timeout => f.write_str("timed out waiting on a host channel"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Why a request got no answer.
///
/// # Examples
///
/// ```
/// use mlua_isle::host::RequestError;
///
/// assert_eq!(RequestError::Timeout.to_string(), "host request timed out");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The Lua end is closed (or the isle is gone): the request was not delivered.
    Closed,
    /// The script received the request but the Lua request that received it ended without
    /// answering.
    Unanswered,
    /// The deadline passed first.
    Timeout,
    /// The script rejected the request with this message (`req:reject(msg)`).
    Rejected(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Closed => f.write_str("host request channel is closed"),
            RequestError::Unanswered => f.write_str("host request was never answered"),
            RequestError::Timeout => f.write_str("host request timed out"),
            RequestError::Rejected(msg) => write!(f, "host request rejected: {msg}"),
        }
    }
}

impl std::error::Error for RequestError {}

// --------------------------------------------------------------------------------------------
// Blocking on a future with an optional deadline (the sync side of every Rust end).

/// Polls `future` on this thread until it completes (`Some`) or `deadline` passes (`None`):
/// briefly busy, then parked until woken (the answer usually comes within microseconds).
fn block_on<F: Future>(future: F, deadline: Option<Instant>) -> Option<F::Output> {
    let mut future = pin!(future);
    let waker = crate::core::wait::thread_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = None;
    loop {
        let ready = crate::core::wait::spin_until(|| {
            if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                out = Some(value);
                return true;
            }
            deadline.is_some_and(|d| Instant::now() >= d)
        });
        if ready {
            return out;
        }
        crate::core::wait::park_until(deadline);
    }
}

/// Completes with `future`'s output, or `None` once `deadline` passes (async).
#[cfg(feature = "tokio")]
async fn until<F: Future>(future: F, deadline: Instant) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer: Option<std::pin::Pin<Box<crate::core::watchdog::Sleep>>> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timer =
            timer.get_or_insert_with(|| Box::pin(crate::core::watchdog::Sleep::until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Counts the clones of one Rust end, so that exactly one drop is the last (the channel's
/// own counts cannot tell two concurrent drops apart).
#[derive(Debug)]
struct Clones(Arc<std::sync::atomic::AtomicUsize>);

impl Default for Clones {
    fn default() -> Self {
        Clones(Arc::new(std::sync::atomic::AtomicUsize::new(1)))
    }
}

impl Clones {
    fn another(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Clones(self.0.clone())
    }

    /// One clone is gone: whether it was the last.
    fn last_gone(&self) -> bool {
        self.0.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

// --------------------------------------------------------------------------------------------
// Rust → Lua

/// The Rust end of a channel into an isle's scripts; see [`channel_to_lua`]. Cheap to clone;
/// the channel closes when every clone is dropped or [`close`](Self::close) is called.
///
/// # Examples
///
/// ```
/// # use mlua_isle::{host, Isle, TaskLibrary};
/// let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
/// let tx = isle.exec(|lua| {
///     let (tx, ch) = host::channel_to_lua::<String>(lua, 4)?;
///     lua.globals().set("ch", ch)?;
///     Ok(tx)
/// })?;
/// tx.try_send("hello".to_owned()).unwrap();
/// assert_eq!(isle.eval::<String>("return (ch:recv())")?, "hello");
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub struct Sender<T> {
    tx: async_channel::Sender<T>,
    interrupter: Arc<Interrupter>,
    clones: Clones,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            interrupter: self.interrupter.clone(),
            clones: self.clones.another(),
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("len", &self.tx.len())
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // The last one closes the channel (before its own sender goes) and wakes a script
        // waiting on it.
        if self.clones.last_gone() {
            self.tx.close();
            self.interrupter.nudge();
        }
    }
}

impl<T: Send + 'static> Sender<T> {
    /// Sends `value`, waiting for room while the channel is full.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the value if the channel is closed.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, nothing is sent.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let tx = isle.exec(|lua| {
    ///     let (tx, ch) = host::channel_to_lua::<i64>(lua, 1)?;
    ///     lua.globals().set("ch", ch)?;
    ///     Ok(tx)
    /// })?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// rt.block_on(async { tx.send(7).await }).unwrap();
    /// assert_eq!(isle.eval::<i64>("return (ch:recv())")?, 7);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        let sent = self.tx.send(value).await.map_err(|e| SendError(e.0));
        self.interrupter.nudge();
        sent
    }

    /// Sends `value`, blocking while the channel is full.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the value if the channel is closed.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread while the channel is full. Calling it on the isle's own
    /// thread with a full channel would wait forever: use [`try_send`](Self::try_send) there.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let tx = isle.exec(|lua| {
    ///     let (tx, ch) = host::channel_to_lua::<i64>(lua, 1)?;
    ///     lua.globals().set("ch", ch)?;
    ///     Ok(tx)
    /// })?;
    /// tx.send_blocking(3).unwrap();
    /// assert_eq!(isle.eval::<i64>("return ch:len()")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn send_blocking(&self, value: T) -> Result<(), SendError<T>> {
        let sent = self.tx.send_blocking(value).map_err(|e| SendError(e.0));
        self.interrupter.nudge();
        sent
    }

    /// Sends `value` if there is room now.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] or [`TrySendError::Closed`], with the value.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let tx = isle.exec(|lua| {
    ///     let (tx, ch) = host::channel_to_lua::<i64>(lua, 1)?;
    ///     lua.globals().set("ch", ch)?;
    ///     Ok(tx)
    /// })?;
    /// tx.try_send(1).unwrap();
    /// assert!(matches!(tx.try_send(2), Err(host::TrySendError::Full(2))));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let sent = self.tx.try_send(value).map_err(|e| match e {
            async_channel::TrySendError::Full(v) => TrySendError::Full(v),
            async_channel::TrySendError::Closed(v) => TrySendError::Closed(v),
        });
        if sent.is_ok() {
            self.interrupter.nudge();
        }
        sent
    }

    /// Closes the channel: scripts receive what is buffered, then find it closed. Returns
    /// `false` if it was closed already.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let tx = isle.exec(|lua| {
    ///     let (tx, ch) = host::channel_to_lua::<i64>(lua, 4)?;
    ///     lua.globals().set("ch", ch)?;
    ///     Ok(tx)
    /// })?;
    /// tx.try_send(1).unwrap();
    /// assert!(tx.close());
    /// assert_eq!(isle.eval::<i64>("local n = 0 for v in ch do n = n + v end return n")?, 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn close(&self) -> bool {
        let closed = self.tx.close();
        self.interrupter.nudge();
        closed
    }

    /// Whether the channel is closed (by either side).
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let tx = isle.exec(|lua| {
    ///     let (tx, ch) = host::channel_to_lua::<i64>(lua, 4)?;
    ///     lua.globals().set("ch", ch)?;
    ///     Ok(tx)
    /// })?;
    /// isle.exec(|lua| lua.load("ch:close()").exec())?;
    /// assert!(tx.is_closed());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Makes a channel from Rust into scripts, holding up to `capacity` values: the Rust
/// [`Sender`], and the Lua end (`recv`, `try_recv`, `close`, `len`, `is_closed`, `iter`,
/// `for v in ch`, a `recv` case of `task.select`).
///
/// # Errors
///
/// If the isle has no `task` library, `capacity` is 0, or Lua runs out of memory.
///
/// # Examples
///
/// ```
/// # use mlua_isle::{host, Isle, TaskLibrary};
/// let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
/// let events = isle.exec(|lua| {
///     let (events, inbox) = host::channel_to_lua::<String>(lua, 8)?;
///     lua.globals().set("inbox", inbox)?;
///     Ok(events)
/// })?;
/// events.send_blocking("a".to_owned()).unwrap();
/// events.send_blocking("b".to_owned()).unwrap();
/// events.close();
/// assert_eq!(isle.eval::<String>("local s = '' for e in inbox do s = s .. e end return s")?, "ab");
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn channel_to_lua<T>(lua: &Lua, capacity: usize) -> mlua::Result<(Sender<T>, Table)>
where
    T: IntoLua + Send + 'static,
{
    check_capacity(capacity)?;
    let (interrupter, wrap) = context(lua)?;
    let (tx, rx) = async_channel::bounded(capacity);
    let end = lua.create_userdata(LuaReceiving {
        rx,
        interrupter: interrupter.clone(),
    })?;
    let table = wrap_end(&wrap, end, "recv")?;
    Ok((
        Sender {
            tx,
            interrupter,
            clones: Clones::default(),
        },
        table,
    ))
}

/// The userdata behind the Lua end of a channel from Rust.
struct LuaReceiving<T> {
    rx: async_channel::Receiver<T>,
    interrupter: Arc<Interrupter>,
}

impl<T: IntoLua + Send + 'static> UserData for LuaReceiving<T> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // value, true | nil, false (closed) | nil, nil (empty)
        methods.add_method("try_recv", |lua, this, ()| match this.rx.try_recv() {
            Ok(v) => Ok((v.into_lua(lua)?, Some(true))),
            Err(async_channel::TryRecvError::Empty) if !this.interrupter.is_closing() => {
                Ok((Value::Nil, None))
            }
            Err(_) => Ok((Value::Nil, Some(false))),
        });
        methods.add_method("close", |_, this, ()| Ok(this.rx.close()));
        methods.add_method("len", |_, this, ()| Ok(this.rx.len()));
        methods.add_method("capacity", |_, this, ()| {
            Ok(this.rx.capacity().unwrap_or(usize::MAX))
        });
        methods.add_method("is_closed", |_, this, ()| {
            Ok(this.rx.is_closed() || this.interrupter.is_closing())
        });
    }
}

// --------------------------------------------------------------------------------------------
// Lua → Rust

/// The Rust end of a channel out of an isle's scripts; see [`channel_from_lua`]. Cheap to
/// clone.
///
/// # Examples
///
/// ```
/// # use mlua_isle::{host, Isle, TaskLibrary};
/// let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
/// let rx = isle.exec(|lua| {
///     let (rx, ch) = host::channel_from_lua::<String>(lua, 4)?;
///     lua.globals().set("out", ch)?;
///     Ok(rx)
/// })?;
/// isle.exec(|lua| lua.load("out:send('hi')").exec())?;
/// assert_eq!(rx.try_recv().unwrap(), "hi");
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub struct Receiver<T> {
    rx: async_channel::Receiver<T>,
    /// Set by a script that found the channel full and waits for room.
    lua_waiting: Arc<AtomicBool>,
    interrupter: Arc<Interrupter>,
    clones: Clones,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            rx: self.rx.clone(),
            lua_waiting: self.lua_waiting.clone(),
            interrupter: self.interrupter.clone(),
            clones: self.clones.another(),
        }
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.rx.len())
            .field("closed", &self.rx.is_closed())
            .finish()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // As for `Sender`.
        if self.clones.last_gone() {
            self.rx.close();
            self.interrupter.nudge();
        }
    }
}

impl<T: Send + 'static> Receiver<T> {
    fn received(&self, got: Result<T, RecvError>) -> Result<T, RecvError> {
        if got.is_ok() && self.lua_waiting.swap(false, Ordering::SeqCst) {
            self.interrupter.nudge();
        }
        got
    }

    /// Receives the next value, waiting for one.
    ///
    /// # Errors
    ///
    /// [`RecvError::Closed`] once the channel is closed and empty.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, no value is lost.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let rx = isle.exec(|lua| {
    ///     let (rx, ch) = host::channel_from_lua::<i64>(lua, 4)?;
    ///     lua.globals().set("out", ch)?;
    ///     Ok(rx)
    /// })?;
    /// isle.exec(|lua| lua.load("out:send(5)").exec())?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// assert_eq!(rt.block_on(rx.recv()).unwrap(), 5);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub async fn recv(&self) -> Result<T, RecvError> {
        let got = self.rx.recv().await.map_err(|_| RecvError::Closed);
        self.received(got)
    }

    /// Receives the next value, blocking until there is one.
    ///
    /// # Errors
    ///
    /// [`RecvError::Closed`] once the channel is closed and empty.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread; on the isle's own thread it would wait for itself.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let rx = isle.exec(|lua| {
    ///     let (rx, ch) = host::channel_from_lua::<i64>(lua, 4)?;
    ///     lua.globals().set("out", ch)?;
    ///     Ok(rx)
    /// })?;
    /// let task = isle.spawn_exec(|lua| lua.load("out:send(1) out:close()").exec())?;
    /// assert_eq!(rx.recv_blocking(), Ok(1));
    /// assert_eq!(rx.recv_blocking(), Err(host::RecvError::Closed));
    /// task.wait()?;
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn recv_blocking(&self) -> Result<T, RecvError> {
        let got = self.rx.recv_blocking().map_err(|_| RecvError::Closed);
        self.received(got)
    }

    /// Receives the next value, blocking for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvError::Timeout`], or [`RecvError::Closed`] once the channel is closed and empty.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread for up to `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let rx = isle.exec(|lua| {
    ///     let (rx, ch) = host::channel_from_lua::<i64>(lua, 4)?;
    ///     lua.globals().set("out", ch)?;
    ///     Ok(rx)
    /// })?;
    /// assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Err(host::RecvError::Timeout));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        let deadline = Instant::now().checked_add(timeout);
        let got = block_on(self.rx.recv(), deadline)
            .unwrap_or(Err(async_channel::RecvError))
            .map_err(|_| {
                if self.rx.is_closed() && self.rx.is_empty() {
                    RecvError::Closed
                } else {
                    RecvError::Timeout
                }
            });
        self.received(got)
    }

    /// Receives a value if one is there now.
    ///
    /// # Errors
    ///
    /// [`RecvError::Empty`], or [`RecvError::Closed`] once the channel is closed and empty.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let rx = isle.exec(|lua| {
    ///     let (rx, ch) = host::channel_from_lua::<i64>(lua, 4)?;
    ///     lua.globals().set("out", ch)?;
    ///     Ok(rx)
    /// })?;
    /// assert_eq!(rx.try_recv(), Err(host::RecvError::Empty));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn try_recv(&self) -> Result<T, RecvError> {
        let got = self.rx.try_recv().map_err(|e| match e {
            async_channel::TryRecvError::Empty => RecvError::Empty,
            async_channel::TryRecvError::Closed => RecvError::Closed,
        });
        self.received(got)
    }

    /// Closes the channel: scripts sending on it get `false` from then on. Returns `false` if
    /// it was closed already.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let rx = isle.exec(|lua| {
    ///     let (rx, ch) = host::channel_from_lua::<i64>(lua, 4)?;
    ///     lua.globals().set("out", ch)?;
    ///     Ok(rx)
    /// })?;
    /// rx.close();
    /// assert!(!isle.eval::<bool>("return out:send(1)")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn close(&self) -> bool {
        let closed = self.rx.close();
        self.interrupter.nudge();
        closed
    }
}

/// Makes a channel from scripts to Rust, holding up to `capacity` values: the Rust
/// [`Receiver`], and the Lua end (`send` — waits while full, returns `false` once closed —,
/// `try_send`, `close`, `is_closed`). Values are converted to `T` when sent; a value that
/// does not convert raises in the script.
///
/// # Errors
///
/// If the isle has no `task` library, `capacity` is 0, or Lua runs out of memory.
///
/// # Examples
///
/// ```
/// # use mlua_isle::{host, Isle, TaskLibrary};
/// let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
/// let results = isle.exec(|lua| {
///     let (results, outbox) = host::channel_from_lua::<i64>(lua, 8)?;
///     lua.globals().set("outbox", outbox)?;
///     Ok(results)
/// })?;
/// isle.exec(|lua| lua.load("for i = 1, 3 do outbox:send(i * i) end outbox:close()").exec())?;
/// let all: Vec<i64> = std::iter::from_fn(|| results.recv_blocking().ok()).collect();
/// assert_eq!(all, [1, 4, 9]);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn channel_from_lua<T>(lua: &Lua, capacity: usize) -> mlua::Result<(Receiver<T>, Table)>
where
    T: FromLua + Send + 'static,
{
    check_capacity(capacity)?;
    let (interrupter, wrap) = context(lua)?;
    let (tx, rx) = async_channel::bounded(capacity);
    let lua_waiting = Arc::new(AtomicBool::new(false));
    let end = lua.create_userdata(LuaSending {
        tx,
        lua_waiting: lua_waiting.clone(),
        interrupter: interrupter.clone(),
    })?;
    let table = wrap_end(&wrap, end, "send")?;
    Ok((
        Receiver {
            rx,
            lua_waiting,
            interrupter,
            clones: Clones::default(),
        },
        table,
    ))
}

/// The userdata behind the Lua end of a channel to Rust.
struct LuaSending<T> {
    tx: async_channel::Sender<T>,
    lua_waiting: Arc<AtomicBool>,
    interrupter: Arc<Interrupter>,
}

impl<T: FromLua + Send + 'static> UserData for LuaSending<T> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // true | false, "full" | false, "closed"
        methods.add_method("try_send", |lua, this, value: Value| {
            let value = T::from_lua(value, lua)?;
            let value = match this.tx.try_send(value) {
                Ok(()) => return Ok((true, None)),
                Err(async_channel::TrySendError::Closed(_)) => return Ok((false, Some("closed"))),
                Err(async_channel::TrySendError::Full(value)) => value,
            };
            // Full: ask for a wake-up, then look again, so that a receive that came between
            // the first look and the request is not missed.
            this.lua_waiting.store(true, Ordering::SeqCst);
            match this.tx.try_send(value) {
                Ok(()) => Ok((true, None)),
                Err(async_channel::TrySendError::Closed(_)) => Ok((false, Some("closed"))),
                // A closing isle will not wait for room: the script learns the channel is
                // closed to it.
                Err(async_channel::TrySendError::Full(_)) if this.interrupter.is_closing() => {
                    Ok((false, Some("closed")))
                }
                Err(async_channel::TrySendError::Full(_)) => Ok((false, Some("full"))),
            }
        });
        methods.add_method("close", |_, this, ()| Ok(this.tx.close()));
        methods.add_method("is_closed", |_, this, ()| Ok(this.tx.is_closed()));
        methods.add_method("len", |_, this, ()| Ok(this.tx.len()));
    }
}

// --------------------------------------------------------------------------------------------
// Requests: Rust → Lua → Rust

type ReplyTx<R> = oneshot::Sender<Result<R, RequestError>>;

/// The Rust end of a request channel; see [`request_channel`]. Cheap to clone.
///
/// # Examples
///
/// ```
/// # use std::time::Duration;
/// # use mlua_isle::{host, Isle, TaskLibrary};
/// let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
/// let ask = isle.exec(|lua| {
///     let (ask, requests) = host::request_channel::<i64, i64>(lua, 8)?;
///     lua.globals().set("requests", requests)?;
///     Ok(ask)
/// })?;
/// let server = isle.spawn_exec(|lua| {
///     lua.load("for req in requests do req:reply(req.value + 1) end").exec()
/// })?;
/// assert_eq!(ask.request_blocking(41, Duration::from_secs(5)), Ok(42));
/// drop(ask);
/// server.wait()?;
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub struct Requester<T, R> {
    tx: async_channel::Sender<(T, ReplyTx<R>)>,
    interrupter: Arc<Interrupter>,
    clones: Clones,
}

impl<T, R> Clone for Requester<T, R> {
    fn clone(&self) -> Self {
        Requester {
            tx: self.tx.clone(),
            interrupter: self.interrupter.clone(),
            clones: self.clones.another(),
        }
    }
}

impl<T, R> fmt::Debug for Requester<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("queued", &self.tx.len())
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl<T, R> Drop for Requester<T, R> {
    fn drop(&mut self) {
        // As for `Sender`.
        if self.clones.last_gone() {
            self.tx.close();
            self.interrupter.nudge();
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Requester<T, R> {
    /// Sends a request and waits for its answer.
    ///
    /// # Errors
    ///
    /// [`RequestError::Closed`] if the Lua end is closed, [`RequestError::Unanswered`] if
    /// the script's request ended without answering, [`RequestError::Rejected`].
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, the request is withdrawn if not yet delivered; a script
    /// that answers it later answers no one.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let ask = isle.exec(|lua| {
    ///     let (ask, requests) = host::request_channel::<String, usize>(lua, 8)?;
    ///     lua.globals().set("requests", requests)?;
    ///     Ok(ask)
    /// })?;
    /// let server = isle.spawn_eval::<()>("local req = requests:recv() req:reply(#req.value)")?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// assert_eq!(rt.block_on(ask.request("four".to_owned())), Ok(4));
    /// server.wait()?;
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub async fn request(&self, value: T) -> Result<R, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((value, reply))
            .await
            .map_err(|_| RequestError::Closed)?;
        self.interrupter.nudge();
        answer.await.unwrap_or(Err(RequestError::Unanswered))
    }

    /// Sends a request and waits for its answer until `timeout` has passed (queueing
    /// included).
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request), and [`RequestError::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// As [`request`](Self::request).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let ask = isle.exec(|lua| {
    ///     let (ask, requests) = host::request_channel::<i64, i64>(lua, 8)?;
    ///     lua.globals().set("requests", requests)?;
    ///     Ok(ask)
    /// })?;
    /// // No script serves the channel.
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let answer = rt.block_on(ask.request_timeout(1, Duration::from_millis(10)));
    /// assert_eq!(answer, Err(host::RequestError::Timeout));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn request_timeout(&self, value: T, timeout: Duration) -> Result<R, RequestError> {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return self.request(value).await;
        };
        until(self.request(value), deadline)
            .await
            .unwrap_or(Err(RequestError::Timeout))
    }

    /// Sends a request and blocks until its answer arrives or `timeout` has passed.
    ///
    /// # Errors
    ///
    /// As [`request_timeout`](Self::request_timeout).
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread for up to `timeout`; on the isle's own thread nothing could
    /// answer meanwhile.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let ask = isle.exec(|lua| {
    ///     let (ask, requests) = host::request_channel::<i64, i64>(lua, 8)?;
    ///     lua.globals().set("requests", requests)?;
    ///     Ok(ask)
    /// })?;
    /// // Nothing serves the channel: the deadline answers.
    /// let answer = ask.request_blocking(1, Duration::from_millis(10));
    /// assert_eq!(answer, Err(host::RequestError::Timeout));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn request_blocking(&self, value: T, timeout: Duration) -> Result<R, RequestError> {
        let deadline = Instant::now().checked_add(timeout);
        block_on(self.request(value), deadline).unwrap_or(Err(RequestError::Timeout))
    }

    /// Closes the channel: scripts find it closed once they received what was queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # use mlua_isle::{host, Isle, TaskLibrary};
    /// # let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
    /// let ask = isle.exec(|lua| {
    ///     let (ask, requests) = host::request_channel::<i64, i64>(lua, 8)?;
    ///     lua.globals().set("requests", requests)?;
    ///     Ok(ask)
    /// })?;
    /// ask.close();
    /// assert!(isle.eval::<bool>("return requests:recv() == nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn close(&self) -> bool {
        let closed = self.tx.close();
        self.interrupter.nudge();
        closed
    }
}

/// Makes a request channel, holding up to `capacity` undelivered requests: the Rust
/// [`Requester`], and the Lua end, which receives requests as a channel does (`recv`,
/// `try_recv`, `for req in ch`, `task.select`). A request has its value in `req.value`; the
/// script answers with `req:reply(v)` (converted to `R`; a value that does not convert
/// raises) or `req:reject(message)`. Answering twice raises.
///
/// # Errors
///
/// If the isle has no `task` library, `capacity` is 0, or Lua runs out of memory.
///
/// # Examples
///
/// ```
/// # use std::time::Duration;
/// # use mlua_isle::{host, Isle, TaskLibrary};
/// let isle = Isle::builder().task_library(TaskLibrary::new()).spawn(|_| Ok(()))?;
/// let ask = isle.exec(|lua| {
///     let (ask, requests) = host::request_channel::<String, String>(lua, 8)?;
///     lua.globals().set("requests", requests)?;
///     Ok(ask)
/// })?;
/// let server = isle.spawn_eval::<()>(
///     "local req = requests:recv() if req.value == '' then req:reject('empty') end",
/// )?;
/// let answer = ask.request_blocking(String::new(), Duration::from_secs(5));
/// assert_eq!(answer, Err(host::RequestError::Rejected("empty".into())));
/// server.wait()?;
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn request_channel<T, R>(lua: &Lua, capacity: usize) -> mlua::Result<(Requester<T, R>, Table)>
where
    T: IntoLua + Send + 'static,
    R: FromLua + Send + 'static,
{
    check_capacity(capacity)?;
    let (interrupter, wrap) = context(lua)?;
    let (tx, rx) = async_channel::bounded(capacity);
    let end = lua.create_userdata(LuaRequests {
        rx,
        interrupter: interrupter.clone(),
    })?;
    let table = wrap_end(&wrap, end, "recv")?;
    Ok((
        Requester {
            tx,
            interrupter,
            clones: Clones::default(),
        },
        table,
    ))
}

/// The userdata behind the Lua end of a request channel.
struct LuaRequests<T, R> {
    rx: async_channel::Receiver<(T, ReplyTx<R>)>,
    interrupter: Arc<Interrupter>,
}

impl<T, R> UserData for LuaRequests<T, R>
where
    T: IntoLua + Send + 'static,
    R: FromLua + Send + 'static,
{
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // value, true, reply | nil, false (closed) | nil, nil (empty)
        methods.add_method("try_recv", |lua, this, ()| loop {
            if crate::core::wait::in_coroutine() {
                // Their answers would be owed across suspensions that other requests end.
                return Err(mlua::Error::runtime(
                    "host requests cannot be received in coroutine requests",
                ));
            }
            match this.rx.try_recv() {
                Ok((value, reply)) => {
                    if reply.is_closed() {
                        continue; // withdrawn by its requester
                    }
                    let value = value.into_lua(lua)?;
                    let reply = lua.create_userdata(Reply::<R>::pending(reply))?;
                    return Ok(MultiValue::from_vec(vec![
                        value,
                        Value::Boolean(true),
                        Value::UserData(reply),
                    ]));
                }
                Err(async_channel::TryRecvError::Empty) if !this.interrupter.is_closing() => {
                    return Ok(MultiValue::from_vec(vec![Value::Nil, Value::Nil]));
                }
                Err(_) => {
                    return Ok(MultiValue::from_vec(vec![
                        Value::Nil,
                        Value::Boolean(false),
                    ]))
                }
            }
        });
        methods.add_method("close", |_, this, ()| Ok(this.close()));
        methods.add_method("len", |_, this, ()| Ok(this.rx.len()));
        methods.add_method("capacity", |_, this, ()| {
            Ok(this.rx.capacity().unwrap_or(usize::MAX))
        });
        methods.add_method("is_closed", |_, this, ()| {
            Ok(this.rx.is_closed() || this.interrupter.is_closing())
        });
    }
}

impl<T, R> LuaRequests<T, R> {
    /// Closes the channel and answers what is queued with [`RequestError::Closed`]: no
    /// script will receive it.
    fn close(&self) -> bool {
        let closed = self.rx.close();
        while let Ok((_, reply)) = self.rx.try_recv() {
            let _ = reply.send(Err(RequestError::Closed));
        }
        closed
    }
}

impl<T, R> Drop for LuaRequests<T, R> {
    fn drop(&mut self) {
        self.close();
    }
}

/// An answer owed to a requester, kept by the Lua thread until the script's request ends.
trait Owed {
    /// Tells the requester that no answer will come.
    fn abandon(self: Box<Self>);
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<R: 'static> Owed for ReplyTx<R> {
    fn abandon(self: Box<Self>) {
        let _ = self.send(Err(RequestError::Unanswered));
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

thread_local! {
    /// Answers owed by the running request, by id.
    static OWED: RefCell<HashMap<u64, Box<dyn Owed>>> = RefCell::new(HashMap::new());
    static NEXT_OWED: Cell<u64> = const { Cell::new(1) };
}

/// Resolves every answer the ending request still owes with [`RequestError::Unanswered`].
pub(super) fn end_request() {
    let owed = OWED.with(|o| o.try_borrow_mut().map(|mut o| std::mem::take(&mut *o)));
    if let Ok(owed) = owed {
        for (_, owed) in owed {
            owed.abandon();
        }
    }
}

/// The reply handle a script gets with each request (`req:reply`, `req:reject`).
struct Reply<R> {
    id: u64,
    _answer: std::marker::PhantomData<fn(R)>,
}

impl<R: FromLua + Send + 'static> Reply<R> {
    fn pending(reply: ReplyTx<R>) -> Self {
        let id = NEXT_OWED.get();
        NEXT_OWED.set(id + 1);
        OWED.with(|o| o.borrow_mut().insert(id, Box::new(reply)));
        Reply {
            id,
            _answer: std::marker::PhantomData,
        }
    }

    fn take(&self) -> mlua::Result<ReplyTx<R>> {
        let owed = OWED
            .with(|o| o.borrow_mut().remove(&self.id))
            .ok_or_else(|| {
                mlua::Error::runtime("this request was answered already, or its request ended")
            })?;
        owed.into_any()
            .downcast::<ReplyTx<R>>()
            .map(|b| *b)
            .map_err(|_| mlua::Error::runtime("reply of the wrong type"))
    }
}

impl<R> Drop for Reply<R> {
    fn drop(&mut self) {
        // Collected unanswered: no answer will come.
        let owed = OWED.with(|o| o.try_borrow_mut().ok().and_then(|mut o| o.remove(&self.id)));
        if let Some(owed) = owed {
            owed.abandon();
        }
    }
}

impl<R: FromLua + Send + 'static> UserData for Reply<R> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("reply", |lua, this, value: Value| {
            // Converted first: a value that does not convert leaves the request owed.
            let answer = R::from_lua(value, lua)?;
            let reply = this.take()?;
            Ok(reply.send(Ok(answer)).is_ok())
        });
        methods.add_method("reject", |_, this, message: String| {
            let reply = this.take()?;
            Ok(reply.send(Err(RequestError::Rejected(message))).is_ok())
        });
    }
}
