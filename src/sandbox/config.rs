//! What a sandbox takes away, and where its `print` goes.

use std::fmt;
use std::sync::Arc;

/// Where `print` writes in a sandboxed VM.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, PrintSink, Sandbox};
///
/// let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
/// let sink = lines.clone();
/// let isle = Isle::builder()
///     .sandbox(Sandbox::new().print(PrintSink::callback(move |line| {
///         sink.lock().unwrap().push(line.to_owned())
///     })))
///     .spawn(|_| Ok(()))?;
/// isle.exec(|lua| lua.load("print('hello', 1, nil)").exec())?;
/// assert_eq!(*lines.lock().unwrap(), ["hello\t1\tnil"]);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Clone, Default)]
pub enum PrintSink {
    /// Output is dropped (the default).
    #[default]
    Discard,
    /// Lua's own `print`, to the host's standard output.
    Stdout,
    /// Output of the running request is kept, up to a number of bytes, for
    /// [`take_output`](crate::take_output) to read before the request ends; what is left is
    /// dropped when it ends. (Coroutine requests that are suspended while others run share
    /// the isle's buffer: what one prints before it awaits, the next request to end drops.)
    Collect {
        /// Bytes kept per request; later output is dropped.
        limit: usize,
    },
    /// Each printed line (without its newline) is handed to a function, on the Lua thread.
    Callback(Arc<dyn Fn(&str) + Send + Sync>),
}

impl PrintSink {
    /// Keeps up to `limit` bytes of each request's output (see [`PrintSink::Collect`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Isle, PrintSink, Sandbox};
    ///
    /// let isle = Isle::builder()
    ///     .sandbox(Sandbox::new().print(PrintSink::collect(1 << 10)))
    ///     .spawn(|_| Ok(()))?;
    /// let printed = isle.exec(|lua| {
    ///     lua.load("print('a') print('b')").exec()?;
    ///     Ok(mlua_isle::take_output(lua))
    /// })?;
    /// assert_eq!(printed, "a\nb\n");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn collect(limit: usize) -> Self {
        PrintSink::Collect { limit }
    }

    /// Hands each printed line to `f` (see [`PrintSink::Callback`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let sink = mlua_isle::PrintSink::callback(|line| eprintln!("script: {line}"));
    /// # let _ = sink;
    /// ```
    pub fn callback(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        PrintSink::Callback(Arc::new(f))
    }
}

impl fmt::Debug for PrintSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrintSink::Discard => f.write_str("Discard"),
            PrintSink::Stdout => f.write_str("Stdout"),
            PrintSink::Collect { limit } => {
                f.debug_struct("Collect").field("limit", limit).finish()
            }
            PrintSink::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

/// What one request can see of what earlier requests did.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, Isolation};
///
/// let isle = Isle::builder()
///     .isolation(Isolation::FreshEnvironment)
///     .spawn(|lua| lua.globals().set("limit", 10))?;
/// isle.eval::<()>("x = 1; limit = 99")?;
/// // The next request starts from the host's globals again.
/// assert_eq!(isle.eval::<Option<i64>>("x")?, None);
/// assert_eq!(isle.eval::<i64>("limit")?, 10);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Isolation {
    /// Every request runs in the same globals: what one leaves, the next sees (the default).
    #[default]
    Shared,
    /// Each `eval` runs in a globals table of its own that reads through to the globals `init`
    /// left; it is emptied when the request ends, so what the request stored becomes garbage.
    /// Library tables and the string metatable are read-only, and garbage-collector settings
    /// a request changed are restored after it. See the crate's "Untrusted scripts" section
    /// for what holds only with a [`Sandbox`].
    ///
    /// # Caveats
    ///
    /// Only `eval` (and `coroutine_eval`) run in the fresh environment: `call` runs a host
    /// function in the globals `init` left, and Lua that `exec` loads itself runs in the real
    /// globals, which no longer hold `_G` once `init` has run (a request that removed its own
    /// `_G` must not find theirs).
    FreshEnvironment,
    /// Each request runs on a VM that no request ran on before: pools only, built from
    /// recycling after every request with a ready spare
    /// ([`IslePoolBuilder::isolation`](crate::IslePoolBuilder::isolation)). A checkout is one
    /// session: its requests share a fresh VM, which is replaced when it is returned. Such a
    /// pool refuses coroutine requests ([`IsleError::Config`](crate::IsleError::Config): they
    /// may run alongside others on one VM), and once it is shut down, requests still queued
    /// resolve [`IsleError::Shutdown`](crate::IsleError::Shutdown) rather than run on a used
    /// VM.
    FreshVm,
}

/// The pieces of the standard environment a sandbox removes or tames. Each can be given back
/// by the host; [`Sandbox::new`] takes them all away.
///
/// Set on an isle with [`IsleBuilder::sandbox`](crate::IsleBuilder::sandbox), or with
/// [`IsleBuilder::sandboxed`](crate::IsleBuilder::sandboxed) together with limits for
/// untrusted code.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, Sandbox};
///
/// let isle = Isle::builder().sandbox(Sandbox::new()).spawn(|_| Ok(()))?;
/// assert!(isle.eval::<bool>("io == nil and os.execute == nil and string.dump == nil")?);
/// assert!(isle.eval::<()>("string.rep = nil").is_err());
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a sandbox does nothing until it is given to a builder"]
pub struct Sandbox {
    pub(crate) file_system: bool,
    pub(crate) full_os: bool,
    pub(crate) debug: bool,
    pub(crate) modules: bool,
    pub(crate) string_dump: bool,
    pub(crate) load_needs_env: bool,
    pub(crate) finalizers: bool,
    pub(crate) gc_control: bool,
    pub(crate) environment_functions: bool,
    pub(crate) jit: bool,
    pub(crate) read_only_libraries: bool,
    pub(crate) read_only_host_tables: bool,
    pub(crate) print: PrintSink,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    /// The strict sandbox: only `string`, `table`, `math`, `utf8`, `coroutine` (and `bit`/
    /// `bit32`/`buffer` where the version has them), `os.clock`, `os.time`, `os.date` and
    /// `os.difftime`; `load` in text mode only and only with an environment; no `print` to the
    /// host's output; no finalizers; `collectgarbage` limited to `"count"`, `"collect"`,
    /// `"step"` and `"isrunning"`; read-only libraries and host tables.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder()
    ///     .sandbox(mlua_isle::Sandbox::new())
    ///     .spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<bool>("require == nil and dofile == nil")?);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn new() -> Self {
        Sandbox {
            file_system: false,
            full_os: false,
            debug: false,
            modules: false,
            string_dump: false,
            load_needs_env: true,
            finalizers: false,
            gc_control: false,
            environment_functions: false,
            jit: false,
            read_only_libraries: true,
            read_only_host_tables: true,
            print: PrintSink::Discard,
        }
    }

    /// Gives back `io`, `dofile` and `loadfile` (default: off).
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().file_system(true);
    /// # let _ = sandbox;
    /// ```
    pub fn file_system(mut self, allow: bool) -> Self {
        self.file_system = allow;
        self
    }

    /// Gives back all of `os` (`execute`, `exit`, `remove`, `getenv`, ...); by default only
    /// `clock`, `time`, `date` and `difftime` are there.
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().full_os(true);
    /// # let _ = sandbox;
    /// ```
    pub fn full_os(mut self, allow: bool) -> Self {
        self.full_os = allow;
        self
    }

    /// Gives back the `debug` library (default: off). It reaches every value in the VM.
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().debug(true);
    /// # let _ = sandbox;
    /// ```
    pub fn debug(mut self, allow: bool) -> Self {
        self.debug = allow;
        self
    }

    /// Gives back `package` and `require` (and `module` on Lua 5.1), which load code from the
    /// file system (default: off).
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().modules(true);
    /// # let _ = sandbox;
    /// ```
    pub fn modules(mut self, allow: bool) -> Self {
        self.modules = allow;
        self
    }

    /// Gives back `string.dump` (default: off).
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().string_dump(true);
    /// # let _ = sandbox;
    /// ```
    pub fn string_dump(mut self, allow: bool) -> Self {
        self.string_dump = allow;
        self
    }

    /// Whether `load` requires an environment (its fourth argument; default: on). Without
    /// one, a loaded chunk would run in the VM's real globals. `load` reads text only either
    /// way, and `loadstring` is removed.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder()
    ///     .sandbox(mlua_isle::Sandbox::new())
    ///     .spawn(|_| Ok(()))?;
    /// assert_eq!(isle.eval::<i64>("load('return x', 'chunk', 't', { x = 3 })()")?, 3);
    /// assert!(isle.eval::<()>("load('return 1')").is_err());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn load_needs_env(mut self, needed: bool) -> Self {
        self.load_needs_env = needed;
        self
    }

    /// Allows scripts to set finalizers: `__gc` in a metatable given to `setmetatable` (and
    /// `newproxy`, on Lua 5.1, LuaJIT and Luau). Default: off, as a finalizer runs whenever the
    /// collector gets to it, possibly during a later request or while the VM closes.
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().finalizers(true);
    /// # let _ = sandbox;
    /// ```
    pub fn finalizers(mut self, allow: bool) -> Self {
        self.finalizers = allow;
        self
    }

    /// Allows every `collectgarbage` option, including `"stop"` and the tuning ones (default:
    /// off).
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().gc_control(true);
    /// # let _ = sandbox;
    /// ```
    pub fn gc_control(mut self, allow: bool) -> Self {
        self.gc_control = allow;
        self
    }

    /// Gives back `getfenv` and `setfenv` on Lua 5.1, LuaJIT and Luau (default: off); they
    /// reach the environments of other functions, the real globals included.
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().environment_functions(true);
    /// # let _ = sandbox;
    /// ```
    pub fn environment_functions(mut self, allow: bool) -> Self {
        self.environment_functions = allow;
        self
    }

    /// Gives back LuaJIT's `jit` module, and `ffi` if the VM has it (a VM from a factory):
    /// default off, as `ffi` calls native code; no effect on other versions.
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().jit_module(true);
    /// # let _ = sandbox;
    /// ```
    pub fn jit_module(mut self, allow: bool) -> Self {
        self.jit = allow;
        self
    }

    /// Whether the library tables (`string`, `table`, `math`, ...) and the string metatable
    /// are read-only once `init` has run (default: on).
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder()
    ///     .sandbox(mlua_isle::Sandbox::new())
    ///     .spawn(|_| Ok(()))?;
    /// assert!(isle.eval::<()>("string.rep = nil").is_err());
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn read_only_libraries(mut self, read_only: bool) -> Self {
        self.read_only_libraries = read_only;
        self
    }

    /// Whether the tables `init` left in the globals (and the tables inside them) are
    /// read-only to scripts once `init` has run (default: on). Tables that have a metatable
    /// are left as they are.
    ///
    /// # Caveats
    ///
    /// A read-only table keeps its contents behind its metatable: reads, writes through
    /// `set`, `pairs` (from Lua 5.2) and `#` (from Lua 5.2) see them, raw accesses from Rust
    /// (`raw_get`, `raw_len`) do not, and neither do `pairs`, `ipairs` and `#` on Lua 5.1 and
    /// LuaJIT. Host code changes such a table by replacing the global.
    ///
    /// # Examples
    ///
    /// ```
    /// let isle = mlua_isle::Isle::builder()
    ///     .sandbox(mlua_isle::Sandbox::new())
    ///     .spawn(|lua| lua.load("config = { level = 3 }").exec())?;
    /// assert!(isle.eval::<()>("config.level = 9").is_err());
    /// assert_eq!(isle.eval::<i64>("config.level")?, 3);
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub fn read_only_host_tables(mut self, read_only: bool) -> Self {
        self.read_only_host_tables = read_only;
        self
    }

    /// Where `print` writes (default: [`PrintSink::Discard`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let sandbox = mlua_isle::Sandbox::new().print(mlua_isle::PrintSink::Stdout);
    /// # let _ = sandbox;
    /// ```
    pub fn print(mut self, sink: PrintSink) -> Self {
        self.print = sink;
        self
    }
}
