//! The VM behind the prompt: runs chunks, shows what they return, survives what they do.

use std::error::Error;
use std::io::{self, Write};

use mlua_isle::{Isle, IsleError};

use crate::chunk::{Chunk, Values};
use crate::ctrl_c::CtrlC;
use crate::options::Options;

/// One isle, kept from chunk to chunk (its globals with it), and the Ctrl-C that stops them.
#[derive(Debug)]
pub struct Session {
    isle: Isle,
    options: Options,
    ctrl_c: CtrlC,
}

impl Session {
    /// Starts the VM and installs the Ctrl-C handler.
    ///
    /// # Errors
    ///
    /// When the isle cannot be started, or the SIGINT handler not installed.
    pub fn start(options: Options) -> Result<Self, Box<dyn Error>> {
        Ok(Session {
            isle: options.isle_builder().spawn(|_| Ok(()))?,
            ctrl_c: CtrlC::install()?,
            options,
        })
    }

    /// Runs `chunk`; Ctrl-C meanwhile cancels it.
    ///
    /// # Errors
    ///
    /// As [`Chunk::run`].
    pub fn run(&self, chunk: Chunk) -> Result<Values, IsleError> {
        self.ctrl_c.cancels(|token| chunk.run(&self.isle, token))
    }

    /// Prints what a chunk returned (tab-separated, as `lua` does) or reports its error on
    /// stderr; returns whether it succeeded. A VM that was given up on (code that could not be
    /// interrupted, such as a loop in a `__gc` finalizer, outlived its grace period) is
    /// replaced by a fresh one.
    ///
    /// # Errors
    ///
    /// When stdout cannot be written or the new VM cannot be started.
    pub fn show(&mut self, result: Result<Values, IsleError>) -> Result<bool, Box<dyn Error>> {
        let error = match result {
            Ok(values) => {
                print_values(&values)?;
                return Ok(true);
            }
            Err(error) => error,
        };
        match &error {
            IsleError::Lua(lua) => match lua.traceback() {
                Some(traceback) => eprintln!("{}\n{traceback}", lua.message()),
                None => eprintln!("{}", lua.message()),
            },
            IsleError::Cancelled => eprintln!("interrupted"),
            IsleError::Timeout => eprintln!("timed out"),
            other => eprintln!("{other}"),
        }
        if !self.isle.is_alive() {
            eprintln!("the chunk did not stop in time: starting a fresh VM (globals are lost)");
            self.isle = self.options.isle_builder().spawn(|_| Ok(()))?;
        }
        Ok(false)
    }
}

fn print_values(values: &Values) -> io::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    out.write_all(&values.join(&b'\t'))?;
    out.write_all(b"\n")?;
    out.flush()
}
