//! The Lua VM as its own thread sees it: how it is created, and how `eval` and `call` find
//! what to run.

use std::any::Any;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use mlua::chunk::ChunkMode;
use mlua::{FromLuaMulti, Function, IntoLuaMulti, Lua, LuaOptions, StdLib, Table, Value};

use crate::core::isle_thread::{Preparation, Prepared};
use crate::core::release::Releases;
use crate::error::IsleError;
use crate::lua_thread::functions::Functions;
use crate::sandbox::Sealed;

/// How the VM is created on the Lua thread.
pub(crate) enum VmSource {
    /// `Lua::new_with(libs, options)`.
    Std { libs: StdLib, options: LuaOptions },
    /// A user closure.
    Factory(Box<dyn FnOnce() -> mlua::Result<Lua> + Send>),
}

impl Default for VmSource {
    fn default() -> Self {
        VmSource::Std {
            libs: StdLib::ALL_SAFE,
            options: default_options(),
        }
    }
}

/// The `LuaOptions` an isle uses by default.
fn default_options() -> LuaOptions {
    let options = LuaOptions::new();
    // Coroutine requests run on coroutines that mlua can recycle once they finish.
    #[cfg(feature = "tokio")]
    let options = options.thread_pool_size(64);
    options
}

impl fmt::Debug for VmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmSource::Std { libs, .. } => f.debug_struct("Std").field("libs", libs).finish(),
            VmSource::Factory(_) => f.write_str("Factory(..)"),
        }
    }
}

impl VmSource {
    /// Creates the VM, or takes `prepared` if it was made from the same libraries and options
    /// (a VM nothing has used yet: the same as a new one).
    pub(crate) fn create(self, prepared: Prepared) -> mlua::Result<Lua> {
        let key = self.key();
        match self {
            VmSource::Std { libs, options } => {
                let prepared = prepared.and_then(|p| p.downcast::<PreparedVm>().ok());
                match prepared {
                    Some(vm) if Some(&vm.key) == key.as_ref() => Ok(vm.lua),
                    _ => Lua::new_with(libs, options),
                }
            }
            VmSource::Factory(factory) => factory(),
        }
    }

    /// What tells the VMs this source makes apart: its libraries and every field of its
    /// options (those of mlua features this crate does not turn on too); `None` for a
    /// factory.
    pub(crate) fn key(&self) -> Option<String> {
        match self {
            VmSource::Std { libs, options } => Some(format!("{libs:?} {options:?}")),
            VmSource::Factory(_) => None,
        }
    }

    /// What makes the next VM like this one ahead of time, while the thread waits for the next
    /// isle; `None` for a factory (whose VM only it can make, when asked).
    pub(crate) fn preparation(&self) -> Option<Preparation> {
        let key = self.key()?;
        let VmSource::Std { libs, options } = self else {
            return None;
        };
        let (libs, options) = (*libs, options.clone());
        Some(Preparation {
            key: key.clone(),
            make: Box::new(move || {
                let lua = Lua::new_with(libs, options).ok()?;
                Some(Box::new(PreparedVm { key, lua }) as Box<dyn Any>)
            }),
        })
    }
}

/// A VM made by a waiting thread for the next isle on it, with the key of what it was made
/// from.
struct PreparedVm {
    key: String,
    lua: Lua,
}

/// The VM plus what the Lua thread caches to answer requests quickly.
pub(crate) struct Vm {
    lua: Lua,
    globals: Table,
    /// Compiled `eval` chunks by source text; `None` when caching is off.
    chunks: Option<LruCache<String, Function>>,
    /// Coroutine bodies (see [`Vm::coroutine`]) by the address of the function they wrap.
    #[cfg(feature = "tokio")]
    bodies: Option<LruCache<usize, (Function, Function)>>,
    /// The sandbox's and isolation's state, once `init` has run.
    sealed: Option<Sealed>,
    /// The functions handed out as handles.
    functions: Functions,
}

impl Vm {
    pub(crate) fn new(lua: Lua, chunk_cache: usize) -> Self {
        let globals = lua.globals();
        Vm {
            globals,
            chunks: NonZeroUsize::new(chunk_cache).map(LruCache::new),
            #[cfg(feature = "tokio")]
            bodies: NonZeroUsize::new(chunk_cache).map(LruCache::new),
            sealed: None,
            functions: Functions::new(),
            lua,
        }
    }

    /// From now on, compiles chunks in the per-request environment if there is one.
    pub(crate) fn seal(&mut self, sealed: Sealed) {
        // Chunks `init` compiled through `eval` are not in it.
        if let Some(chunks) = &mut self.chunks {
            chunks.clear();
        }
        self.sealed = Some(sealed);
    }

    /// Forgets what the finished request left behind (a no-op without isolation or sandbox).
    /// If much memory is in use, a collection is due: [`Vm::collect`] runs it.
    pub(crate) fn after_request(&mut self) -> Collection {
        // Handles dropped while the request ran (the request's own, say) or whose message did
        // not fit in the queue.
        self.functions.release(&self.lua);
        let Some(sealed) = &mut self.sealed else {
            return Collection::None;
        };
        if !sealed.after_request(&self.lua) {
            return Collection::None;
        }
        if let Some(chunks) = &mut self.chunks {
            chunks.clear();
        }
        #[cfg(feature = "tokio")]
        if let Some(bodies) = &mut self.bodies {
            bodies.clear();
        }
        match sealed.script_finalizers() {
            true => Collection::MayRunScripts,
            false => Collection::HostOnly,
        }
    }

    /// Collects garbage (for [`Vm::after_request`]).
    pub(crate) fn collect(&self) {
        let _ = self.lua.gc_collect();
    }

    /// Runs a coroutine request's `code` as [`coroutine`](Self::coroutine) does: compiled in
    /// an environment of its own when requests get a fresh one (coroutine requests may run
    /// alongside each other), and then not cached, so that the environment goes with it.
    #[cfg(feature = "tokio")]
    pub(crate) fn coroutine_eval<T: FromLuaMulti + 'static>(
        &mut self,
        code: &str,
    ) -> Result<crate::lua_thread::executor::LuaFuture<T>, IsleError> {
        let env = self
            .sealed
            .as_ref()
            .map(|s| s.coroutine_env(&self.lua))
            .transpose()?
            .flatten();
        match env {
            Some(env) => {
                let chunk = self.compile(code, Some(&env))?;
                self.coroutine_with(chunk, (), false)
            }
            None => {
                let chunk = self.chunk(code)?;
                self.coroutine_with(chunk, (), true)
            }
        }
    }

    pub(crate) fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Runs `code` as an expression if it is one, otherwise as a block, like Lua's REPL.
    pub(crate) fn eval<T: FromLuaMulti>(&mut self, code: &str) -> Result<T, IsleError> {
        let chunk = self.chunk(code)?;
        crate::lua_thread::call::call(&self.lua, &chunk, ())
    }

    /// As [`eval`](Self::eval), the chunk called with `args` (its `...`).
    pub(crate) fn eval_with<T: FromLuaMulti>(
        &mut self,
        code: &str,
        args: impl IntoLuaMulti,
    ) -> Result<T, IsleError> {
        let chunk = self.chunk(code)?;
        crate::lua_thread::call::call(&self.lua, &chunk, args)
    }

    /// The compiled chunk for `code` (from the cache when possible).
    pub(crate) fn chunk(&mut self, code: &str) -> mlua::Result<Function> {
        if let Some(function) = self.chunks.as_mut().and_then(|c| c.get(code)) {
            return Ok(function.clone());
        }
        let env = self.sealed.as_ref().and_then(Sealed::env).cloned();
        let function = self.compile(code, env.as_ref())?;
        let cached =
            self.sealed.as_ref().is_none_or(|s| s.caches(code.len())) && !assigns_env(code);
        if let (Some(chunks), true) = (&mut self.chunks, cached) {
            chunks.put(code.to_owned(), function.clone());
        }
        Ok(function)
    }

    fn compile(&self, code: &str, env: Option<&Table>) -> mlua::Result<Function> {
        fn in_env<'a>(
            chunk: mlua::chunk::Chunk<'a>,
            env: Option<&Table>,
        ) -> mlua::chunk::Chunk<'a> {
            match env {
                Some(env) => chunk.set_environment(env.clone()),
                None => chunk,
            }
        }
        if !starts_with_statement_keyword(code) {
            let expression = in_env(
                self.lua
                    .load(format!("return {code}"))
                    .set_name(self.chunk_name(code))
                    .set_mode(ChunkMode::Text),
                env,
            )
            .into_function();
            match expression {
                Ok(function) => return Ok(function),
                // Out of memory as an expression: as a block it would need as much, and its
                // syntax error would hide why it failed.
                Err(err @ mlua::Error::MemoryError(_)) => return Err(err),
                Err(_) => {}
            }
        }
        in_env(
            self.lua
                .load(code)
                .set_name(self.chunk_name(code))
                .set_mode(ChunkMode::Text),
            env,
        )
        .into_function()
    }

    /// The name `code` is compiled under: the code itself, as Lua names a loaded string (up to
    /// a NUL byte, where a C string ends); in a sealed VM (whose memory is the scripts') only
    /// as much of it as Lua shows in messages.
    fn chunk_name<'c>(&self, code: &'c str) -> std::borrow::Cow<'c, str> {
        let code = code.split('\0').next().unwrap_or_default();
        match self.sealed {
            Some(_) => crate::sandbox::short_chunk_name(code),
            None => code.into(),
        }
    }

    /// Calls the global function `name`.
    pub(crate) fn call<T: FromLuaMulti>(
        &mut self,
        name: &str,
        args: impl IntoLuaMulti,
    ) -> Result<T, IsleError> {
        let function = self.global_function(name)?;
        crate::lua_thread::call::call(&self.lua, &function, args)
    }

    /// The global function `name`.
    pub(crate) fn global_function(&self, name: &str) -> Result<Function, IsleError> {
        match self.globals.get::<Value>(name)? {
            Value::Function(function) => Ok(function),
            other => Err(IsleError::NotAFunction {
                name: name.to_owned(),
                type_name: other.type_name(),
            }),
        }
    }

    /// Keeps `function` for a handle; returns its key and where the handle gives it back.
    pub(crate) fn hand_out(
        &mut self,
        function: Function,
    ) -> Result<(usize, Arc<Releases>), IsleError> {
        self.functions.insert(&self.lua, function)
    }

    /// The function handed out under `key`, unless it was given back.
    pub(crate) fn handed_out(&self, key: usize) -> Option<Result<Function, IsleError>> {
        self.functions.get(&self.lua, key)
    }

    /// Frees the functions whose handles were dropped.
    pub(crate) fn release_functions(&mut self) {
        self.functions.release(&self.lua);
    }

    /// Runs `function` with `args` as a coroutine that may await async Rust functions; returns
    /// the future driving it. The coroutine gets a protected base frame (mlua resumes and
    /// closes it itself, out of reach of the isle's coroutine wrappers); dropping the future
    /// while the coroutine awaits drops the awaited Rust future at once.
    #[cfg(feature = "tokio")]
    pub(crate) fn coroutine<T: FromLuaMulti + 'static>(
        &mut self,
        function: Function,
        args: impl IntoLuaMulti,
    ) -> Result<crate::lua_thread::executor::LuaFuture<T>, IsleError> {
        self.coroutine_with(function, args, true)
    }

    /// Runs a function handed out as a handle as a coroutine, as [`coroutine`](Self::coroutine)
    /// does, without caching its body: the cache would keep the function alive once its
    /// handle is gone.
    #[cfg(feature = "tokio")]
    pub(crate) fn coroutine_handed_out<T: FromLuaMulti + 'static>(
        &mut self,
        function: Function,
        args: impl IntoLuaMulti,
    ) -> Result<crate::lua_thread::executor::LuaFuture<T>, IsleError> {
        self.coroutine_with(function, args, false)
    }

    #[cfg(feature = "tokio")]
    fn coroutine_with<T: FromLuaMulti + 'static>(
        &mut self,
        function: Function,
        args: impl IntoLuaMulti,
        cache: bool,
    ) -> Result<crate::lua_thread::executor::LuaFuture<T>, IsleError> {
        // Coroutine requests do not end with `after_request`: handles given back are freed
        // when one starts.
        self.functions.release(&self.lua);
        let key = function.to_pointer() as usize;
        let cached = self.bodies.as_mut().and_then(|b| b.get(&key)).cloned();
        let body = match cached {
            Some((_, body)) => body,
            None => {
                let body = crate::interrupt::protected_body(&self.lua, function.clone())?;
                if let (Some(bodies), true) = (&mut self.bodies, cache) {
                    // The entry holds `function`, so its address cannot be reused meanwhile.
                    bodies.put(key, (function, body.clone()));
                }
                body
            }
        };
        Ok(Box::pin(body.call_async::<T>(args)))
    }
}

/// Whether `code` may assign `_ENV` (Lua 5.2+), which would change the compiled chunk for its
/// next run: plain Lua loads a chunk afresh each time, so such code is not cached.
fn assigns_env(code: &str) -> bool {
    cfg!(any(
        feature = "lua52",
        feature = "lua53",
        feature = "lua54",
        feature = "lua55"
    )) && code.contains("_ENV")
}

/// Whether `code` begins with a keyword that can only start a statement, so that trying to
/// compile it as an expression would certainly fail.
fn starts_with_statement_keyword(code: &str) -> bool {
    const KEYWORDS: [&str; 9] = [
        "return", "local", "if", "for", "while", "do", "repeat", "goto", "break",
    ];
    let code = code.trim_start();
    if code.starts_with("::") {
        return true;
    }
    KEYWORDS.iter().any(|kw| {
        code.strip_prefix(kw)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM prepared as an isle's thread prepares it (the requests' call path included).
    fn prepared_vm() -> Vm {
        let lua = VmSource::default().create(None).unwrap();
        crate::lua_thread::call::install(&lua).unwrap();
        Vm::new(lua, 4)
    }

    /// A VM prepared from `libs` and the default options, marked with a global.
    fn prepared_from(libs: StdLib) -> Option<Box<dyn Any>> {
        let source = VmSource::Std {
            libs,
            options: default_options(),
        };
        let prepared = (source.preparation().unwrap().make)().unwrap();
        let vm = prepared.downcast_ref::<PreparedVm>().unwrap();
        vm.lua.globals().set("marked", true).unwrap();
        Some(prepared)
    }

    /// Whether `lua` is a VM [`prepared_from`] made.
    fn marked(lua: &Lua) -> bool {
        lua.globals()
            .get::<Option<bool>>("marked")
            .unwrap()
            .is_some()
    }

    #[test]
    fn a_vm_prepared_from_the_same_libraries_and_options_is_taken() {
        let lua = VmSource::default()
            .create(prepared_from(StdLib::ALL_SAFE))
            .unwrap();
        assert!(marked(&lua));
    }

    #[test]
    fn a_vm_prepared_from_other_libraries_or_options_is_not() {
        let lua = VmSource::default()
            .create(prepared_from(StdLib::MATH))
            .unwrap();
        assert!(!marked(&lua));
        assert!(lua
            .globals()
            .get::<Option<mlua::Table>>("string")
            .unwrap()
            .is_some());
        let other_options = VmSource::Std {
            libs: StdLib::ALL_SAFE,
            options: default_options().catch_rust_panics(false),
        };
        let lua = other_options
            .create(prepared_from(StdLib::ALL_SAFE))
            .unwrap();
        assert!(!marked(&lua));
        // Something else than a VM is no VM.
        let lua = VmSource::default().create(Some(Box::new(1_u8))).unwrap();
        assert!(!marked(&lua));
    }

    #[test]
    fn a_factory_prepares_nothing() {
        let source = VmSource::Factory(Box::new(|| Ok(Lua::new())));
        assert!(source.preparation().is_none());
    }

    #[test]
    fn statement_keywords_are_recognised_as_whole_words() {
        assert!(starts_with_statement_keyword("return 1"));
        assert!(starts_with_statement_keyword("  local x = 1"));
        assert!(starts_with_statement_keyword("::top:: goto top"));
        assert!(!starts_with_statement_keyword("returned"));
        assert!(!starts_with_statement_keyword("do_it()"));
        assert!(!starts_with_statement_keyword("1 + 1"));
        assert!(!starts_with_statement_keyword("function() end"));
    }

    #[test]
    fn eval_handles_expressions_and_blocks() {
        let mut vm = prepared_vm();
        assert_eq!(vm.eval::<i64>("1 + 1").unwrap(), 2);
        assert_eq!(vm.eval::<i64>("return 3").unwrap(), 3);
        assert_eq!(vm.eval::<i64>("local x = 4; return x").unwrap(), 4);
        assert_eq!(vm.eval::<i64>("x = 5").map(|_: i64| ()).ok(), None);
        vm.eval::<()>("y = 6").unwrap();
        assert_eq!(vm.eval::<i64>("y").unwrap(), 6);
    }

    #[test]
    fn cached_chunks_run_afresh_each_time() {
        let mut vm = prepared_vm();
        vm.eval::<()>("n = 0").unwrap();
        for expected in 1..=3 {
            assert_eq!(vm.eval::<i64>("n = n + 1; return n").unwrap(), expected);
        }
    }
}

/// The collection due after a request (see [`Vm::after_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collection {
    /// None.
    None,
    /// One that may run finalizers set by scripts, which may never return: it runs while the
    /// request still counts as running, so that the grace period bounds it.
    MayRunScripts,
    /// One that runs no script code: bounded by the VM's memory, it is not the request's doing
    /// and does not count against its grace period.
    HostOnly,
}
