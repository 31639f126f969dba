//! A chunk of Lua source, compiled and run on the isle the way `lua` itself does it.

use std::path::Path;

use mlua_isle::mlua::{self, Function, Lua, LuaString, MultiValue};
use mlua_isle::{CancelToken, Isle, IsleError, LuaErrorKind};

/// Source text to run, with the name Lua gives it in messages.
#[derive(Debug)]
pub struct Chunk {
    source: Vec<u8>,
    name: String,
    /// Tried as `return <source>` first, so that an expression prints its value.
    expression_first: bool,
}

/// What a chunk returned, each value converted by Lua's `tostring`.
pub type Values = Vec<Vec<u8>>;

impl Chunk {
    /// A line typed at the prompt: an expression, or else a statement.
    pub fn typed(source: &str) -> Self {
        Chunk::named(source.into(), "=stdin", true)
    }

    /// Lines typed at the prompt after an incomplete one: a statement.
    pub fn continued(source: &str) -> Self {
        Chunk::named(source.into(), "=stdin", false)
    }

    /// A chunk given with `-e`.
    pub fn command_line(source: &str) -> Self {
        Chunk::named(source.into(), "=(command line)", false)
    }

    /// A script file's contents.
    pub fn script(path: &Path, source: Vec<u8>) -> Self {
        Chunk::named(source, &format!("@{}", path.display()), false)
    }

    fn named(source: Vec<u8>, name: &str, expression_first: bool) -> Self {
        Chunk {
            source,
            name: name.to_owned(),
            expression_first,
        }
    }

    /// Compiles and runs the chunk on the isle; cancelling `token` stops it.
    ///
    /// # Errors
    ///
    /// The chunk's syntax or runtime error (see [`is_incomplete`]), [`IsleError::Cancelled`],
    /// [`IsleError::Timeout`], or [`IsleError::Abandoned`] once the isle gave up on a chunk
    /// that could not be stopped.
    pub fn run(self, isle: &Isle, token: &CancelToken) -> Result<Values, IsleError> {
        isle.request().token(token).exec(move |lua| {
            let values = self.compile(lua)?.call::<MultiValue>(())?;
            let tostring: Function = lua.globals().get("tostring")?;
            values
                .iter()
                // As bytes: Lua strings need not be UTF-8.
                .map(|value| Ok(tostring.call::<LuaString>(value)?.as_bytes().to_vec()))
                .collect()
        })
    }

    fn compile(&self, lua: &Lua) -> mlua::Result<Function> {
        if self.expression_first {
            let expression = [b"return ", self.source.as_slice()].concat();
            if let Ok(function) = lua.load(expression).set_name(&self.name).into_function() {
                return Ok(function);
            }
        }
        lua.load(&self.source).set_name(&self.name).into_function()
    }
}

/// Whether `error` says the chunk ended too early, so more lines may complete it: Lua's
/// syntax error then points at `<eof>`, which `lua` itself checks for too.
pub fn is_incomplete(error: &IsleError) -> bool {
    error.as_lua().is_some_and(|e| {
        e.kind() == LuaErrorKind::Syntax
            && (e.message().ends_with("<eof>") || e.message().ends_with("'<eof>'"))
    })
}
