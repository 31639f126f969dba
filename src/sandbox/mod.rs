//! Untrusted scripts: what a sandboxed VM lacks, read-only libraries and host tables, and a
//! fresh environment for each request.
//!
//! Applied by the Lua thread in two steps: [`restrict`] before `init` (removals and tamed
//! functions), [`seal`] after it (read-only tables, the per-request environment); between
//! requests, [`Sealed::after_request`] empties that environment.
//!
//! May import from `error` and `interrupt`, not from `lua_thread`, `handle` or `pool`.

mod config;
mod output;

use std::sync::OnceLock;

use mlua::{Lua, StdLib, Table, Value};

pub use config::{Isolation, PrintSink, Sandbox};
pub use output::take_output;

/// Where the table of read-only tables (each mapped to its hidden contents) is kept.
const FROZEN: &str = "mlua_isle.sandbox.frozen";

/// The standard libraries a sandbox keeps out of the VM it is created with.
pub(crate) fn libraries(sandbox: &Sandbox, mut libs: StdLib) -> StdLib {
    #[cfg(not(feature = "luau"))]
    if !sandbox.file_system {
        libs = without(libs, StdLib::IO);
    }
    #[cfg(not(feature = "luau"))]
    if !sandbox.modules {
        libs = without(libs, StdLib::PACKAGE);
    }
    if !sandbox.debug {
        libs = without(libs, StdLib::DEBUG);
    }
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    if !sandbox.jit {
        libs = without(without(libs, StdLib::JIT), StdLib::FFI);
    }
    libs
}

/// `libs` without `lib`.
fn without(libs: StdLib, lib: StdLib) -> StdLib {
    (libs | lib) ^ lib
}

/// Removes and tames what `sandbox` takes away, before `init` runs.
pub(crate) fn restrict(lua: &Lua, sandbox: &Sandbox) -> mlua::Result<()> {
    static COMPILED: OnceLock<Vec<u8>> = OnceLock::new();
    let globals = lua.globals();
    let opts = lua.create_table()?;
    opts.raw_set("file_system", sandbox.file_system)?;
    opts.raw_set("full_os", sandbox.full_os)?;
    opts.raw_set("debug", sandbox.debug)?;
    opts.raw_set("modules", sandbox.modules)?;
    opts.raw_set("string_dump", sandbox.string_dump)?;
    opts.raw_set("load_needs_env", sandbox.load_needs_env)?;
    opts.raw_set("finalizers", sandbox.finalizers)?;
    opts.raw_set("gc_control", sandbox.gc_control)?;
    opts.raw_set("environment_functions", sandbox.environment_functions)?;
    opts.raw_set("jit", sandbox.jit)?;
    opts.raw_set("keep_print", matches!(sandbox.print, PrintSink::Stdout))?;
    let compile = lua.create_function(
        |lua, (text, name, env): (mlua::LuaString, Option<String>, Table)| {
            let name = match name {
                Some(name) => name,
                None => short_chunk_name(&text.to_string_lossy()).into_owned(),
            };
            let loaded = lua
                .load(text.as_bytes().to_vec())
                .set_name(name)
                .set_mode(mlua::chunk::ChunkMode::Text)
                .set_environment(env)
                .into_function();
            Ok(match loaded {
                Ok(function) => (Value::Function(function), None),
                Err(err) => (Value::Nil, Some(output::load_error_message(&err))),
            })
        },
    )?;
    let sink = output::install(lua, &sandbox.print)?;
    let source = include_str!("restrict.lua");
    let chunk = crate::interrupt::load_own_chunk(lua, &COMPILED, source, "=[isle sandbox]")?;
    chunk.call::<()>((globals, opts, frozen_table(lua)?, compile, sink))
}

/// The table of read-only tables, created on first use (weak keys).
fn frozen_table(lua: &Lua) -> mlua::Result<Table> {
    if let Ok(table) = lua.named_registry_value::<Table>(FROZEN) {
        return Ok(table);
    }
    let table = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.raw_set("__mode", "k")?;
    table.set_metatable(Some(meta))?;
    lua.set_named_registry_value(FROZEN, &table)?;
    Ok(table)
}

/// The tables among the globals before `init` runs: the libraries, by name.
pub(crate) fn library_tables(lua: &Lua) -> mlua::Result<Table> {
    let globals = lua.globals();
    let libraries = lua.create_table()?;
    for pair in globals.pairs::<Value, Value>() {
        let (name, value) = pair?;
        if let (Value::String(_), Value::Table(table)) = (&name, &value) {
            if *table != globals {
                libraries.raw_set(name, value)?;
            }
        }
    }
    Ok(libraries)
}

/// What [`seal`] left in the VM that later requests need.
pub(crate) struct Sealed {
    /// The environment of plain requests, emptied after each (with [`Isolation::FreshEnvironment`]).
    env: Option<FreshEnv>,
    /// The VM's memory limit: when a finished request leaves more than a quarter of it in
    /// use, the environment and the chunk cache start over and garbage is collected (Lua 5.1,
    /// LuaJIT and Luau do not collect before failing an allocation).
    memory_limit: Option<usize>,
    /// Whether scripts may set finalizers: then a collection may run script code.
    script_finalizers: bool,
}

/// The per-request environment: a table that reads through to the globals.
struct FreshEnv {
    table: Table,
    meta: Table,
}

/// Makes tables read-only after `init` and prepares the per-request environment. `host_ends`:
/// the task library's host channel ends, as the keys of a table (they protect their fields
/// themselves; here `rawset` refuses them too).
pub(crate) fn seal(
    lua: &Lua,
    sandbox: Option<&Sandbox>,
    isolation: Isolation,
    libraries: Option<Table>,
    memory_limit: Option<usize>,
    host_ends: Option<&Table>,
) -> mlua::Result<Sealed> {
    let fresh = isolation == Isolation::FreshEnvironment;
    let freeze_libraries = fresh || sandbox.is_some_and(|s| s.read_only_libraries);
    let freeze_host = fresh || sandbox.is_some_and(|s| s.read_only_host_tables);
    #[cfg(feature = "tokio")]
    lua.set_app_data(SealedLimit {
        memory_limit,
        script_finalizers: sandbox.is_none_or(|s| s.finalizers),
    });
    // Before the libraries become read-only.
    if fresh || sandbox.is_some() {
        output::watch_random_seed(lua, sandbox.is_some())?;
    }
    if freeze_libraries || freeze_host {
        let libraries = match libraries {
            Some(libraries) => libraries,
            None => lua.create_table()?,
        };
        freeze(lua, libraries, freeze_libraries, freeze_host, host_ends)?;
    }
    let gc_free = sandbox.is_none_or(|s| s.gc_control);
    let env = if fresh {
        if gc_free {
            output::watch_gc_settings(lua)?;
        }
        // A request whose environment lost its `_G` must not find the real globals' one
        // through it: from here on `_G` is only the request's own environment.
        lua.globals().raw_remove("_G")?;
        Some(FreshEnv::new(lua)?)
    } else {
        None
    };
    // Luau's own sandbox: read-only globals, and a writable environment of the main thread's
    // own over them (what requests share without a fresh environment).
    #[cfg(feature = "luau")]
    if sandbox.is_some_and(|s| s.read_only_libraries) {
        lua.sandbox(true)?;
    }
    Ok(Sealed {
        env,
        memory_limit,
        script_finalizers: sandbox.is_none_or(|s| s.finalizers),
    })
}

#[cfg(not(feature = "luau"))]
fn freeze(
    lua: &Lua,
    libraries: Table,
    freeze_libraries: bool,
    freeze_host: bool,
    host_ends: Option<&Table>,
) -> mlua::Result<()> {
    static COMPILED: OnceLock<Vec<u8>> = OnceLock::new();
    let source = include_str!("seal.lua");
    let chunk = crate::interrupt::load_own_chunk(lua, &COMPILED, source, "=[isle seal]")?;
    chunk.call::<()>((
        lua.globals(),
        frozen_table(lua)?,
        libraries,
        freeze_libraries,
        freeze_host,
        cfg!(any(
            feature = "lua51",
            feature = "lua52",
            feature = "luajit",
            feature = "luajit52"
        )),
        host_ends,
    ))
}

#[cfg(feature = "luau")]
fn freeze(
    lua: &Lua,
    libraries: Table,
    freeze_libraries: bool,
    freeze_host: bool,
    // (Read-only from the start on Luau: see `host::wrap_end`.)
    _host_ends: Option<&Table>,
) -> mlua::Result<()> {
    // Tables reachable through keys and values, without metatables.
    fn deep(table: &Table, seen: &mut Vec<Table>) -> mlua::Result<()> {
        if table.metatable().is_some() || seen.contains(table) {
            return Ok(());
        }
        seen.push(table.clone());
        for pair in table.pairs::<Value, Value>() {
            let (key, value) = pair?;
            for inner in [key, value] {
                if let Value::Table(inner) = inner {
                    deep(&inner, seen)?;
                }
            }
        }
        table.set_readonly(true);
        Ok(())
    }
    let globals = lua.globals();
    let mut seen = vec![globals.clone()];
    for pair in globals.pairs::<Value, Value>() {
        let (name, value) = pair?;
        let Value::Table(table) = value else {
            continue;
        };
        let library = libraries
            .raw_get::<Option<Table>>(name)?
            .is_some_and(|lib| lib == table);
        if (library && freeze_libraries) || (!library && freeze_host) {
            deep(&table, &mut seen)?;
        }
    }
    if freeze_libraries {
        if let Some(meta) = lua.type_metatable::<mlua::LuaString>() {
            meta.set_readonly(true);
        }
    }
    Ok(())
}

impl FreshEnv {
    fn new(lua: &Lua) -> mlua::Result<FreshEnv> {
        let meta = lua.create_table()?;
        meta.raw_set("__index", lua.globals())?;
        meta.raw_set("__metatable", false)?;
        Ok(FreshEnv {
            table: FreshEnv::table(lua, &meta)?,
            meta,
        })
    }

    fn table(lua: &Lua, meta: &Table) -> mlua::Result<Table> {
        let table = lua.create_table()?;
        table.set_metatable(Some(meta.clone()))?;
        table.raw_set("_G", &table)?;
        Ok(table)
    }
}

impl Sealed {
    /// The environment plain `eval` chunks are compiled with, if requests get a fresh one.
    pub(crate) fn env(&self) -> Option<&Table> {
        self.env.as_ref().map(|env| &env.table)
    }

    /// Whether a collection may run code of the scripts (finalizers they set).
    pub(crate) fn script_finalizers(&self) -> bool {
        self.script_finalizers
    }

    /// Whether a chunk of `len` bytes of source is kept compiled: a sealed VM's memory is the
    /// scripts' (under its limit), so large chunks, whose constants can be large, are not.
    pub(crate) fn caches(&self, len: usize) -> bool {
        len <= CACHED_CHUNK_LIMIT
    }

    #[cfg(feature = "tokio")]
    /// A new environment for one coroutine request (which may run alongside others).
    pub(crate) fn coroutine_env(&self, lua: &Lua) -> mlua::Result<Option<Table>> {
        self.env
            .as_ref()
            .map(|env| FreshEnv::table(lua, &env.meta))
            .transpose()
    }

    /// Forgets what the request left: its globals, its output, the collector settings and
    /// random seed it changed. Returns `true` when the environment was replaced by a new table
    /// (chunks compiled with the old one must be dropped).
    ///
    /// Emptying the environment allocates nothing, so it cannot fail for lack of memory;
    /// replacing it can, and then the emptied one stays.
    pub(crate) fn after_request(&mut self, lua: &Lua) -> bool {
        forget_request_effects(lua);
        let Some(env) = &mut self.env else {
            return false;
        };
        let _ = env.table.clear();
        let _ = env.table.raw_set("_G", &env.table);
        // An emptied table keeps its capacity: a request that grew its environment (or left
        // large chunks in the cache) holds memory the next request may need. Under a limit,
        // when much is in use, start over: a new environment, no cached chunks, a collection.
        let crowded = self
            .memory_limit
            .is_some_and(|limit| lua.used_memory() > limit / 4);
        if !crowded {
            return false;
        }
        if let Ok(table) = FreshEnv::table(lua, &env.meta) {
            env.table = table;
        }
        true
    }
}

/// How much of a chunk's source names it in a sealed VM: as much as Lua shows in messages, so
/// that a large chunk is not kept twice (its text, then its name).
pub(crate) fn short_chunk_name(code: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 120;
    let line = code.split('\n').next().unwrap_or("");
    if line.len() == code.len() && code.len() <= SHOWN {
        return code.into();
    }
    let mut end = line.len().min(SHOWN);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    // The newline makes Lua mark the name as cut short ("...").
    format!("{}\n", &line[..end]).into()
}

/// Chunks longer than this are compiled for each request in a sealed VM.
const CACHED_CHUNK_LIMIT: usize = 16 << 10;

/// Forgets what a finished request (plain or coroutine) changed outside its environment:
/// its collected output, the collector settings, the random seed.
fn forget_request_effects(lua: &Lua) {
    output::clear(lua);
    output::restore_gc_settings(lua);
    output::reseed_if_seeded(lua);
}

#[cfg(feature = "tokio")]
/// After a coroutine request in a sealed VM: forgets what it changed outside its environment
/// (see [`Sealed::after_request`]). Much memory in use means its environment should be
/// collected at once (an allocation that fails does not always collect first): returns
/// `Collect::Now`, or `Collect::Later` when scripts may have set finalizers (a collection
/// would run them, with hooks off, before the request is resolved).
pub(crate) fn after_coroutine_request(lua: &Lua) -> Collect {
    let Some((limit, finalizers)) = lua
        .app_data_ref::<SealedLimit>()
        .map(|sealed| (sealed.memory_limit, sealed.script_finalizers))
    else {
        return Collect::No;
    };
    forget_request_effects(lua);
    match limit.is_some_and(|limit| lua.used_memory() > limit / 4) {
        false => Collect::No,
        true if finalizers => Collect::Later,
        true => Collect::Now,
    }
}

/// Whether (and when) garbage is to be collected after a coroutine request.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collect {
    No,
    /// Before the request's result is reported.
    Now,
    /// Once its caller has the result.
    Later,
}

#[cfg(feature = "tokio")]
/// Marks a sealed VM (for [`after_coroutine_request`]).
struct SealedLimit {
    memory_limit: Option<usize>,
    script_finalizers: bool,
}
