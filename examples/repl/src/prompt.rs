//! The prompt: lines in, chunks out, with `lua`'s rules for when a chunk is complete.

use std::error::Error;
use std::io;
use std::path::Path;

use mlua_isle::IsleError;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::chunk::{is_incomplete, Chunk, Values};
use crate::session::Session;

/// Reads chunks and runs them until Ctrl-D (or the end of the input).
///
/// # Errors
///
/// When the terminal cannot be read, stdout not written, the history file not read or saved,
/// or a VM given up on not replaced.
pub fn run(session: &mut Session, history: Option<&Path>) -> Result<(), Box<dyn Error>> {
    let mut editor = DefaultEditor::new()?;
    if let Some(path) = history {
        match editor.load_history(path) {
            Err(ReadlineError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
            loaded => loaded?,
        }
    }
    loop {
        match read_and_run(&mut editor, session) {
            Ok(Some(entered)) => {
                editor.add_history_entry(entered.source)?;
                session.show(entered.result)?;
            }
            Ok(None) => {}
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    println!();
    if let Some(path) = history {
        editor.save_history(path)?;
    }
    Ok(())
}

/// A chunk read at the prompt (all its lines), and what running it gave.
struct Entered {
    source: String,
    result: Result<Values, IsleError>,
}

/// Reads a line and runs it, asking for more lines (on a `>>` prompt) while the chunk is
/// incomplete; returns the whole chunk with what it returned. Like `lua`, only a chunk's first
/// line is tried as an expression. `None` when Ctrl-C dropped what was typed.
fn read_and_run(
    editor: &mut DefaultEditor,
    session: &Session,
) -> Result<Option<Entered>, ReadlineError> {
    let mut source = match editor.readline("> ") {
        Err(ReadlineError::Interrupted) => return Ok(None),
        line => line?,
    };
    let mut result = session.run(Chunk::typed(&source));
    while result.as_ref().is_err_and(is_incomplete) {
        match editor.readline(">> ") {
            Err(ReadlineError::Interrupted) => return Ok(None),
            line => {
                source.push('\n');
                source.push_str(&line?);
            }
        }
        result = session.run(Chunk::continued(&source));
    }
    Ok(Some(Entered { source, result }))
}
