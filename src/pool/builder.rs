//! Configuring a pool: the members' isle settings plus the pool's own.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread;

use mlua::Lua;

use super::isle_pool::IslePool;
use super::recycle::Recycle;
use super::shared::{Factory, MemberFn, Parts, Template};
use crate::error::IsleError;
use crate::handle::builder::IsleBuilder;
use crate::sandbox::Isolation;

/// The default capacity of a pool's queue, per member.
pub const DEFAULT_POOL_QUEUE_PER_MEMBER: usize = 256;

/// Configures and starts an [`IslePool`].
///
/// Every member is an isle made from the same [`IsleBuilder`] (VM options, memory limit,
/// default timeout, interrupt mode, ...), runs the same `init`, and is named
/// `{thread_name}-{index}`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mlua_isle::{IsleBuilder, IslePool, Recycle};
///
/// let pool = IslePool::builder()
///     .isle(IsleBuilder::new().memory_limit(32 << 20).timeout(Duration::from_secs(1)))
///     .size(2)
///     .thread_name("scripts")
///     .recycle(Recycle::new().after_requests(10_000))
///     .spawn(|lua| lua.load("function double(x) return 2 * x end").exec())?;
/// assert_eq!(pool.call::<i64>("double", 21)?, 42);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct IslePoolBuilder {
    isle: IsleBuilder,
    size: Option<usize>,
    thread_name: Option<String>,
    factory: Option<Factory>,
    recycle: Recycle,
    on_return: Option<MemberFn>,
    queue_capacity: Option<usize>,
    spares: usize,
    /// Whether every request gets a VM of its own.
    fresh_vm: bool,
}

impl fmt::Debug for IslePoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IslePoolBuilder")
            .field("isle", &self.isle)
            .field("size", &self.size)
            .field("thread_name", &self.thread_name)
            .field("factory", &self.factory.as_ref().map(|_| ".."))
            .field("recycle", &self.recycle)
            .field("on_return", &self.on_return.as_ref().map(|_| ".."))
            .field("queue_capacity", &self.queue_capacity)
            .field("spares", &self.spares)
            .field("fresh_vm", &self.fresh_vm)
            .finish()
    }
}

impl Default for IslePoolBuilder {
    fn default() -> Self {
        IslePoolBuilder {
            isle: IsleBuilder::new(),
            size: None,
            thread_name: None,
            factory: None,
            recycle: Recycle::default(),
            on_return: None,
            queue_capacity: None,
            spares: 0,
            fresh_vm: false,
        }
    }
}

impl IslePoolBuilder {
    /// A pool of default isles, one per available core.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePoolBuilder::new().spawn(|_| Ok(()))?;
    /// assert!(pool.size() >= 1);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn new() -> Self {
        IslePoolBuilder::default()
    }

    /// The settings every member's isle is made with. Its thread name, if set, names the
    /// members unless [`thread_name`](Self::thread_name) is set. A one-shot
    /// [`IsleBuilder::factory`] cannot make several VMs: use
    /// [`factory`](Self::factory) here instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder()
    ///     .isle(mlua_isle::IsleBuilder::new().memory_limit(8 << 20))
    ///     .size(1)
    ///     .spawn(|_| Ok(()))?;
    /// assert!(pool.eval::<()>("local t = {} for i = 1, 1e8 do t[i] = i end").is_err());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn isle(mut self, isle: IsleBuilder) -> Self {
        self.isle = isle;
        self
    }

    /// How many members (at least 1; default: the available cores).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(3).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.size(), 3);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn size(mut self, members: usize) -> Self {
        self.size = Some(members);
        self
    }

    /// Names the members' threads `{name}-{index}` (default `mlua-isle-pool-{index}`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).thread_name("rules").spawn(|_| Ok(()))?;
    /// let name = pool.exec(|_| Ok(std::thread::current().name().map(str::to_owned)))?;
    /// assert_eq!(name.as_deref(), Some("rules-0"));
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = Some(name.into());
        self
    }

    /// Makes every member's VM with `factory` (on the member's thread) instead of the
    /// isle settings' standard libraries and options.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::mlua::{Lua, LuaOptions, StdLib};
    ///
    /// let pool = mlua_isle::IslePool::builder()
    ///     .size(1)
    ///     .factory(|| Lua::new_with(StdLib::MATH, LuaOptions::new()))
    ///     .spawn(|_| Ok(()))?;
    /// assert!(pool.eval::<bool>("string == nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn factory<F>(mut self, factory: F) -> Self
    where
        F: Fn() -> mlua::Result<Lua> + Send + Sync + 'static,
    {
        self.factory = Some(Arc::new(factory));
        self
    }

    /// When members are replaced by fresh VMs; see [`Recycle`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder()
    ///     .size(1)
    ///     .recycle(mlua_isle::Recycle::new().after_requests(1))
    ///     .spawn(|_| Ok(()))?;
    /// pool.exec(|lua| lua.globals().set("left_behind", 1))?;
    /// assert!(pool.eval::<bool>("left_behind == nil")?); // a fresh VM
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn recycle(mut self, policy: Recycle) -> Self {
        self.recycle = policy;
        self
    }

    /// Runs `reset` on a checked-out member's VM when it is returned, before anyone else
    /// gets it. If it fails (or panics), the member is replaced instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder()
    ///     .size(1)
    ///     .on_return(|lua| lua.globals().set("session", mlua_isle::mlua::Nil))
    ///     .spawn(|_| Ok(()))?;
    /// let guard = pool.checkout()?;
    /// guard.exec(|lua| lua.globals().set("session", "alice"))?;
    /// drop(guard);
    /// assert!(pool.eval::<bool>("session == nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn on_return<F>(mut self, reset: F) -> Self
    where
        F: Fn(&Lua) -> mlua::Result<()> + Send + Sync + 'static,
    {
        self.on_return = Some(Arc::new(reset));
        self
    }

    /// The capacity of the pool's queue (default: [`DEFAULT_POOL_QUEUE_PER_MEMBER`] per
    /// member). When it is full, submitting waits, or fails with [`IsleError::Full`] with
    /// [`try_enqueue`](crate::Request::try_enqueue).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).queue_capacity(8).spawn(|_| Ok(()))?;
    /// assert_eq!(pool.eval::<i64>("8")?, 8);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// Keeps `spares` members started (their `init` done) but not serving: when a member is
    /// recycled or dies, a spare takes its place at once and a new spare starts in the
    /// background, so that even a pool of one that recycles after every request never makes
    /// a request wait for a VM to start. Default 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{IslePool, Recycle};
    ///
    /// // A fresh VM for every request, with no start on the request path.
    /// let pool = IslePool::builder()
    ///     .size(1)
    ///     .spares(1)
    ///     .recycle(Recycle::new().after_requests(1))
    ///     .spawn(|_| Ok(()))?;
    /// assert_eq!((pool.stats().size, pool.stats().spares), (1, 1));
    /// pool.exec(|lua| lua.globals().set("left", 1))?;
    /// assert!(pool.eval::<bool>("left == nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spares(mut self, spares: usize) -> Self {
        self.spares = spares;
        self
    }

    /// The members' isles get [`IsleBuilder::sandboxed`]: the strict sandbox, a fresh
    /// environment per request and limits for untrusted code. Replaces the sandbox, isolation
    /// and limits of an [`isle`](Self::isle) builder given before; one given after replaces
    /// these.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder().size(1).sandboxed().spawn(|_| Ok(()))?;
    /// assert!(pool.eval::<bool>("io == nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn sandboxed(mut self) -> Self {
        self.isle = self.isle.sandboxed();
        self
    }

    /// Chooses what a request sees of earlier ones. [`Isolation::FreshVm`] runs each request
    /// on a VM no request ran on before: every member is replaced after one request (whatever
    /// [`recycle`](Self::recycle) says), with at least one spare started ahead so that a
    /// request does not wait for a VM to start while the pool keeps up. Others are set on the
    /// members' isles ([`IsleBuilder::isolation`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{IslePool, Isolation};
    ///
    /// let pool = IslePool::builder()
    ///     .size(1)
    ///     .isolation(Isolation::FreshVm)
    ///     .spawn(|_| Ok(()))?;
    /// pool.eval::<()>("string.rep = nil")?;
    /// assert_eq!(pool.eval::<String>("string.rep('a', 2)")?, "aa");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        if isolation == Isolation::FreshVm {
            self.fresh_vm = true;
        } else {
            self.fresh_vm = false;
            self.isle = self.isle.isolation(isolation);
        }
        self
    }

    /// Starts every member, runs `init` on each (and later on every replacement), and returns
    /// once all of them are ready.
    ///
    /// # Errors
    ///
    /// [`IsleError::Config`] for a size or queue capacity of 0 or a one-shot isle factory;
    /// [`IsleError::Init`] if a member's `init` fails; [`IsleError::Spawn`] if a thread cannot
    /// start. Members started so far are shut down.
    ///
    /// # Blocking
    ///
    /// Blocks until every member's `init` has finished.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = mlua_isle::IslePool::builder()
    ///     .size(2)
    ///     .spawn(|lua| lua.globals().set("answer", 42))?;
    /// assert_eq!(pool.eval::<i64>("answer")?, 42);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn spawn<F>(self, init: F) -> Result<IslePool, IsleError>
    where
        F: Fn(&Lua) -> mlua::Result<()> + Send + Sync + 'static,
    {
        IslePool::start(self.into_parts(init)?)
    }

    /// Validates the settings and turns them into what the pool is made from.
    pub(crate) fn into_parts<F>(self, init: F) -> Result<Parts, IsleError>
    where
        F: Fn(&Lua) -> mlua::Result<()> + Send + Sync + 'static,
    {
        let size = self.size.unwrap_or_else(|| {
            thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if size == 0 {
            return Err(IsleError::Config("a pool needs at least one member"));
        }
        let queue_capacity = self
            .queue_capacity
            .unwrap_or(DEFAULT_POOL_QUEUE_PER_MEMBER.saturating_mul(size));
        if queue_capacity == 0 {
            return Err(IsleError::Config("queue capacity must be at least 1"));
        }
        if self.isle.has_factory() {
            return Err(IsleError::Config(
                "a pool makes many VMs: give it a factory with IslePoolBuilder::factory",
            ));
        }
        let name = self
            .thread_name
            .or_else(|| self.isle.name().map(str::to_owned))
            .unwrap_or_else(|| "mlua-isle-pool".to_owned());
        let default_timeout = self.isle.default_timeout();
        let template = Template {
            isle: Mutex::new(self.isle),
            factory: self.factory,
            init: Arc::new(init),
            on_return: self.on_return,
            name,
        };
        let (recycle, spares) = match self.fresh_vm {
            true => (self.recycle.after_requests(1), self.spares.max(1)),
            false => (self.recycle, self.spares),
        };
        Ok(Parts {
            template,
            recycle,
            size,
            spares,
            queue_capacity,
            default_timeout,
            fresh_vm: self.fresh_vm,
        })
    }
}
