//! What a sandboxed request leaves outside its globals: printed output and collector settings.

use std::cell::{Cell, RefCell};

use mlua::{Function, Lua, MultiValue, Value};

use super::config::PrintSink;

/// A request's collected output.
struct Output {
    text: RefCell<String>,
    limit: usize,
}

/// Set when a request changed how the collector runs.
struct GcTouched(Cell<bool>);

/// Set when a request seeded the random generator; holds the original `math.randomseed`.
struct Seeded {
    seeded: Cell<bool>,
    randomseed: Function,
}

/// The function `print` hands each line to, or `None` when `print` keeps Lua's own behaviour
/// or discards.
pub(super) fn install(lua: &Lua, sink: &PrintSink) -> mlua::Result<Option<Function>> {
    match sink {
        PrintSink::Discard | PrintSink::Stdout => Ok(None),
        PrintSink::Collect { limit } => {
            lua.set_app_data(Output {
                text: RefCell::new(String::new()),
                limit: *limit,
            });
            lua.create_function(|lua, line: mlua::LuaString| {
                if let Some(output) = lua.app_data_ref::<Output>() {
                    let mut text = output.text.borrow_mut();
                    let line = line.to_string_lossy();
                    if text.len() + line.len() < output.limit {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
                Ok(())
            })
            .map(Some)
        }
        PrintSink::Callback(callback) => {
            let callback = callback.clone();
            lua.create_function(move |_, line: mlua::LuaString| {
                callback(&line.to_string_lossy());
                Ok(())
            })
            .map(Some)
        }
    }
}

/// Takes what the running request has printed so far, with a sandbox whose `print` goes to
/// [`PrintSink::Collect`]; empty otherwise. Call it on the Lua thread (in `exec`, or in a
/// host function) before the request ends: output left when it ends is dropped.
///
/// # Examples
///
/// ```
/// use mlua_isle::{Isle, PrintSink, Sandbox};
///
/// let isle = Isle::builder()
///     .sandbox(Sandbox::new().print(PrintSink::collect(4096)))
///     .spawn(|_| Ok(()))?;
/// let (sum, printed) = isle.exec(|lua| {
///     let sum: i64 = lua.load("print('adding') return 1 + 2").eval()?;
///     Ok((sum, mlua_isle::take_output(lua)))
/// })?;
/// assert_eq!((sum, printed.as_str()), (3, "adding\n"));
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
pub fn take_output(lua: &Lua) -> String {
    lua.app_data_ref::<Output>()
        .map(|output| output.text.take())
        .unwrap_or_default()
}

/// Drops what is left of the finished request's output.
pub(super) fn clear(lua: &Lua) {
    if let Some(output) = lua.app_data_ref::<Output>() {
        let mut text = output.text.borrow_mut();
        if !text.is_empty() {
            *text = String::new();
        }
    }
}

/// The message `load` returns for a chunk that does not compile.
pub(super) fn load_error_message(err: &mlua::Error) -> String {
    match err {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::MemoryError(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Makes `collectgarbage` note when a request changes how the collector runs, so that
/// [`restore_gc_settings`] puts it back.
pub(super) fn watch_gc_settings(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    let Ok(original) = globals.get::<Function>("collectgarbage") else {
        return Ok(());
    };
    lua.set_app_data(GcTouched(Cell::new(false)));
    let watched = lua.create_function(move |lua, args: MultiValue| {
        let harmless = match args.front() {
            None | Some(Value::Nil) => true,
            Some(Value::String(option)) => {
                matches!(
                    &*option.as_bytes(),
                    b"count" | b"collect" | b"step" | b"isrunning"
                )
            }
            Some(_) => false,
        };
        if !harmless {
            if let Some(touched) = lua.app_data_ref::<GcTouched>() {
                touched.0.set(true);
            }
        }
        original.call::<MultiValue>(args)
    })?;
    globals.raw_set("collectgarbage", watched)
}

/// Restarts the collector and puts back its default mode and parameters if the request
/// touched them.
pub(super) fn restore_gc_settings(lua: &Lua) {
    let touched = lua
        .app_data_ref::<GcTouched>()
        .is_some_and(|touched| touched.0.replace(false));
    if !touched {
        return;
    }
    lua.gc_restart();
    #[cfg(feature = "lua54")]
    lua.gc_set_mode(mlua::state::GcMode::Incremental(
        mlua::state::GcIncParams::default()
            .pause(200)
            .step_multiplier(100)
            .step_size(13),
    ));
    #[cfg(any(
        feature = "lua53",
        feature = "lua52",
        feature = "lua51",
        feature = "luajit"
    ))]
    lua.gc_set_mode(mlua::state::GcMode::Incremental(
        mlua::state::GcIncParams::default()
            .pause(200)
            .step_multiplier(200),
    ));
    #[cfg(feature = "lua55")]
    lua.gc_set_mode(mlua::state::GcMode::Incremental(
        mlua::state::GcIncParams::default(),
    ));
}

/// Makes `math.randomseed` note that a request seeded the generator, so that
/// [`reseed_if_seeded`] gives the next request an unpredictable sequence again. Where the
/// generator is the C library's, shared by the whole process (Lua 5.1 to 5.3), a sandboxed
/// script's `randomseed` does nothing instead.
pub(super) fn watch_random_seed(lua: &Lua, sandboxed: bool) -> mlua::Result<()> {
    let Ok(math) = lua.globals().get::<mlua::Table>("math") else {
        return Ok(());
    };
    let Ok(randomseed) = math.raw_get::<Function>("randomseed") else {
        return Ok(());
    };
    const PROCESS_WIDE: bool = cfg!(any(feature = "lua51", feature = "lua52", feature = "lua53"));
    if PROCESS_WIDE {
        if sandboxed {
            math.raw_set(
                "randomseed",
                lua.create_function(|_, _: MultiValue| Ok(()))?,
            )?;
        }
        return Ok(());
    }
    lua.set_app_data(Seeded {
        seeded: Cell::new(false),
        randomseed: randomseed.clone(),
    });
    let watched = lua.create_function(move |lua, args: MultiValue| {
        if let Some(seeded) = lua.app_data_ref::<Seeded>() {
            seeded.seeded.set(true);
        }
        randomseed.call::<MultiValue>(args)
    })?;
    math.raw_set("randomseed", watched)
}

/// Seeds the random generator from the host if the finished request seeded it.
pub(super) fn reseed_if_seeded(lua: &Lua) {
    let Some(randomseed) = lua
        .app_data_ref::<Seeded>()
        .filter(|seeded| seeded.seeded.replace(false))
        .map(|seeded| seeded.randomseed.clone())
    else {
        return;
    };
    let _ = randomseed.call::<()>(host_entropy());
}

/// A seed the script cannot predict.
fn host_entropy() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // Within the range every version takes as a seed.
    (hasher.finish() >> 12) as i64
}
