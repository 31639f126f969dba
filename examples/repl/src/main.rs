//! An interactive Lua prompt whose Ctrl-C stops the running chunk, not the process.
//!
//! The VM lives on an isle, a thread of its own; the prompt hands it each chunk as a request
//! with a cancel token, and Ctrl-C cancels the token. So `while true do end` (or a loop
//! inside `pcall`) is interrupted, and the prompt comes back with every global kept.
//!
//! Run with: `cargo run -p repl` (`-- --help` for the options, `-- --sandbox` for untrusted
//! code).

mod chunk;
mod ctrl_c;
mod options;
mod prompt;
mod session;

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;

use crate::chunk::Chunk;
use crate::options::Options;
use crate::session::Session;

fn main() -> ExitCode {
    match run(Options::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("repl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the `-e` chunks and the script, then the prompt; `false` when a chunk failed (which
/// ends the run, as with `lua`).
fn run(options: Options) -> Result<bool, Box<dyn Error>> {
    let mut chunks: Vec<Chunk> = options
        .chunks
        .iter()
        .map(|c| Chunk::command_line(c))
        .collect();
    if let Some(path) = &options.script {
        let source =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        chunks.push(Chunk::script(path, source));
    }
    let prompts = options.prompts();
    let history = options.history.clone();
    let mut session = Session::start(options)?;
    for chunk in chunks {
        let result = session.run(chunk);
        if !session.show(result)? {
            return Ok(false);
        }
    }
    if prompts {
        prompt::run(&mut session, history.as_deref())?;
    }
    Ok(true)
}
