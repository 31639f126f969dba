//! The command line: what the VM may do and what runs before (or instead of) the prompt.

use std::num::ParseIntError;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mlua_isle::{IsleBuilder, PrintSink, Sandbox};

/// An interactive Lua prompt whose Ctrl-C stops the running chunk, not the process.
///
/// The VM runs on a thread of its own (an isle): Ctrl-C while a chunk runs interrupts it, even
/// `while true do end` or a loop inside `pcall`, and returns to the prompt with every global
/// kept. At the prompt, Ctrl-C clears the line and Ctrl-D leaves.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Options {
    /// Stop a chunk that runs longer than this many seconds (say 0.5)
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Option<Duration>,

    /// Limit the VM to this many MiB: an allocation past it fails the chunk, not the VM
    #[arg(long = "memory", value_name = "MIB", value_parser = mebibytes)]
    pub memory_limit: Option<usize>,

    /// Take away what untrusted code must not have: io, os.execute/exit, debug, require,
    /// dofile, string.dump, finalizers; libraries become read-only. `print` still writes to
    /// the terminal, and globals are kept from one chunk to the next as without the sandbox
    /// (a fresh environment per chunk would forget `x = 1` by the next line). Set limits with
    /// --timeout and --memory.
    #[arg(long)]
    pub sandbox: bool,

    /// Run this chunk before anything else (may be repeated)
    #[arg(short = 'e', value_name = "CHUNK")]
    pub chunks: Vec<String>,

    /// Enter the prompt after -e chunks and the script (without them it is entered anyway)
    #[arg(short = 'i')]
    pub interactive: bool,

    /// Keep the prompt's history in this file (by default it is kept for the session only)
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,

    /// A Lua script to run after the -e chunks
    pub script: Option<PathBuf>,
}

impl Options {
    /// The isle these options describe.
    pub fn isle_builder(&self) -> IsleBuilder {
        let mut builder = IsleBuilder::new().thread_name("lua");
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(bytes) = self.memory_limit {
            builder = builder.memory_limit(bytes);
        }
        if self.sandbox {
            builder = builder.sandbox(Sandbox::new().print(PrintSink::Stdout));
        }
        builder
    }

    /// Whether the prompt is entered: always with `-i`, otherwise only when there is nothing
    /// else to run (as with `lua` itself).
    pub fn prompts(&self) -> bool {
        self.interactive || (self.chunks.is_empty() && self.script.is_none())
    }
}

/// `--timeout`: a positive number of seconds, fractions allowed.
fn seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(timeout) if !timeout.is_zero() => Ok(timeout),
        _ => Err(format!("{text} is not a positive number of seconds")),
    }
}

/// `--memory`: a positive whole number of MiB, as bytes.
fn mebibytes(text: &str) -> Result<usize, String> {
    let mib: usize = text.parse().map_err(|e: ParseIntError| e.to_string())?;
    match mib.checked_mul(1 << 20) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(format!("{text} MiB is not a memory limit")),
    }
}
