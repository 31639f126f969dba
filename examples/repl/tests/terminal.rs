//! The prompt driven in a real pseudo-terminal, keys and all: Ctrl-C reaches the process as
//! the terminal's SIGINT, or as a key at the prompt, exactly as when a person types it.
//!
//! Each step waits for what the REPL prints, never for time to pass; the expect timeout is a
//! hang guard only. The terminal does not echo (the line editor does, in raw mode), so seeing
//! a typed line come back means the line editor is reading it.

#![cfg(unix)]

use std::process::Command;

use rexpect::error::Error;
use rexpect::process::WaitStatus;
use rexpect::session::{spawn_command, PtySession};

/// Generous: only a hung REPL takes this long.
const HANG_GUARD_MS: u64 = 30_000;

/// Starts the REPL with `args` and waits for its first prompt.
fn start(args: &[&str]) -> Result<PtySession, Error> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_repl"));
    command.args(args).env("TERM", "xterm");
    let mut repl = spawn_command(command, Some(HANG_GUARD_MS))?;
    repl.exp_string("> ")?;
    Ok(repl)
}

/// Types `line` and Enter.
fn enter(repl: &mut PtySession, line: &str) -> Result<(), Error> {
    repl.send(line)?;
    repl.send("\r")?;
    repl.flush()
}

/// Types `line` and Enter, then waits for `output` and the prompt after it.
fn eval(repl: &mut PtySession, line: &str, output: &str) -> Result<String, Error> {
    enter(repl, line)?;
    let before = repl.exp_string(output)?;
    repl.exp_string("> ")?;
    Ok(before)
}

/// Ctrl-D at the prompt; the REPL must exit with status 0.
fn exit(mut repl: PtySession) -> Result<(), Error> {
    repl.send_control('d')?;
    repl.exp_eof()?;
    match repl.process().wait()? {
        WaitStatus::Exited(_, 0) => Ok(()),
        status => panic!("the REPL ended with {status:?}"),
    }
}

#[test]
fn expressions_statements_and_multi_line_chunks_share_the_globals() -> Result<(), Error> {
    let mut repl = start(&[])?;
    enter(&mut repl, "x = 41")?;
    eval(&mut repl, "x + 1", "42")?;
    // An incomplete chunk continues on a `>>` prompt until it compiles.
    enter(&mut repl, "function twice(n)")?;
    repl.exp_string(">> ")?;
    enter(&mut repl, "  return 2 * n")?;
    repl.exp_string(">> ")?;
    enter(&mut repl, "end")?;
    eval(&mut repl, "twice(x)", "82")?;
    // Several values, tab-separated, through `tostring` (and so `__tostring`); strings raw.
    eval(
        &mut repl,
        "'a' .. 'b', 1.5, nil, setmetatable({}, {__tostring = function() return 'T' .. 'T' end})",
        "ab\t1.5\tnil\tTT",
    )?;
    // An error is reported with its traceback, and the session goes on.
    eval(
        &mut repl,
        "error('bo' .. 'om')",
        "stdin:1: boom\r\nstack traceback:",
    )?;
    eval(&mut repl, "x", "41")?;
    exit(repl)
}

#[test]
fn ctrl_c_interrupts_a_running_chunk_and_keeps_the_state() -> Result<(), Error> {
    let mut repl = start(&[])?;
    enter(&mut repl, "x = 41")?;
    for (line, running) in [
        ("print('run' .. 'ning') while true do end", "running"),
        // A loop that catches every error cannot catch the interrupt either.
        (
            "print('still ' .. 'looping') while true do pcall(function() while true do end end) end",
            "still looping",
        ),
    ] {
        enter(&mut repl, line)?;
        // Printed by the chunk itself: the line editor has handed the terminal back, so Ctrl-C
        // is now the terminal's SIGINT.
        repl.exp_string(running)?;
        repl.send_control('c')?;
        repl.exp_string("interrupted")?;
        repl.exp_string("> ")?;
    }
    eval(&mut repl, "x", "41")?;
    exit(repl)
}

#[test]
fn ctrl_c_at_the_prompt_clears_the_line() -> Result<(), Error> {
    let mut repl = start(&[])?;
    eval(&mut repl, "x = 41 return 'set'", "set")?;
    repl.send("x = 0")?;
    repl.flush()?;
    repl.exp_string("x = 0")?; // the line editor has it
    repl.send_control('c')?;
    // Like a terminal's own Ctrl-C, the line editor drops what was typed ahead of it, so the
    // next line waits for the new prompt.
    repl.exp_string("> ")?;
    // Had the line been kept, this would run `x = 0x`, a syntax error.
    eval(&mut repl, "x", "41")?;
    exit(repl)
}

#[test]
fn ctrl_c_at_a_continuation_prompt_drops_the_whole_chunk() -> Result<(), Error> {
    let mut repl = start(&[])?;
    enter(&mut repl, "x = {")?;
    repl.exp_string(">> ")?;
    repl.send_control('c')?;
    repl.exp_string("> ")?;
    // Had the chunk been kept, this line would continue it.
    let before = eval(&mut repl, "'fresh ' .. 'chunk'", "fresh chunk")?;
    assert!(!before.contains(">> "), "{before:?}");
    exit(repl)
}

#[test]
fn timeout_stops_a_runaway_chunk() -> Result<(), Error> {
    let mut repl = start(&["--timeout", "0.2"])?;
    enter(&mut repl, "x = 41")?;
    eval(&mut repl, "while true do end", "timed out")?;
    eval(&mut repl, "x", "41")?;
    exit(repl)
}

#[test]
fn memory_limit_fails_the_chunk_not_the_vm() -> Result<(), Error> {
    let mut repl = start(&["--memory", "16"])?;
    enter(&mut repl, "x = 41")?;
    eval(
        &mut repl,
        "local t = {} while true do t[#t + 1] = ('x'):rep(1024) .. #t end",
        "not enough memory",
    )?;
    eval(&mut repl, "x", "41")?;
    exit(repl)
}

#[test]
fn a_chunk_that_cannot_be_interrupted_costs_the_vm_not_the_session() -> Result<(), Error> {
    let mut repl = start(&["--timeout", "0.2"])?;
    enter(&mut repl, "x = 41")?;
    // Lua runs finalizers with hooks off: no interrupt reaches this loop. A grace period after
    // the deadline the isle gives up on its VM.
    eval(
        &mut repl,
        "setmetatable({}, {__gc = function() while true do end end}) collectgarbage()",
        "fresh VM",
    )?;
    eval(&mut repl, "x == nil", "true")?;
    exit(repl)
}

#[test]
fn ctrl_d_at_a_fresh_prompt_exits_with_status_0() -> Result<(), Error> {
    exit(start(&[])?)
}
