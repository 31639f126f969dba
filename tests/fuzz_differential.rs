//! Differential fuzzing: a generated Lua program (see `common::lua_gen`) must give the same
//! values, or the same error, in an isle as in plain mlua on one thread.
//!
//! Each program runs on three fresh VMs, since programs tamper with their libraries: a plain
//! `mlua::Lua`, an isle through [`Isle::exec`] (the same loading and conversion as the plain
//! side, on the isle's thread) and an isle through [`Isle::eval`] (the isle's own loading and
//! conversion).
//!
//! - `MLUA_ISLE_FUZZ_CASES` (default 2000): how many programs the default test runs.
//! - `MLUA_ISLE_FUZZ_SEED` (default 0): the first seed; programs use consecutive seeds.
//! - `MLUA_ISLE_FUZZ_SECS`: how long the ignored long mode runs (default 60), with
//!   `cargo test --test fuzz_differential -- --ignored`.
//!
//! - `MLUA_ISLE_FUZZ_KNOWN=1`: also generate the constructs for which an isle is known to differ
//!   (`lua_gen::KNOWN_DIFFERENCES`), to see whether they still do.
//!
//! A mismatch is reported with its seed and program; reproduce it with
//! `MLUA_ISLE_FUZZ_SEED=<seed> MLUA_ISLE_FUZZ_CASES=1`.

mod common;

use std::ffi::c_void;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{lua_gen, within_hang_guard};
use mlua::{FromLuaMulti, Lua, MultiValue, Value};
use mlua_isle::{Isle, IsleError, LuaError, LuaErrorKind};

/// Programs the default test runs, unless `MLUA_ISLE_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: u64 = 2000;

/// How long the long mode runs, unless `MLUA_ISLE_FUZZ_SECS` says otherwise.
const DEFAULT_SECS: u64 = 60;

/// Mismatches printed in full; the others are listed by seed.
const PRINTED_MISMATCHES: usize = 5;

/// How deep nested tables are dumped.
const DUMP_DEPTH: usize = 4;

/// A Lua value turned into plain Rust data that can be compared across threads and VMs.
#[derive(Debug, Clone, PartialEq)]
enum Owned {
    /// `nil`.
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer (a Lua 5.3+ integer, or an integral number where mlua reports one).
    Int(i64),
    /// A float, by its `Debug` text (so that NaN equals NaN).
    Num(String),
    /// A string, lossily decoded.
    Str(String),
    /// A table's raw entries sorted by key, and whether it has a metatable.
    Table {
        meta: bool,
        entries: Vec<(Owned, Owned)>,
    },
    /// A table already being dumped (a cycle), or one nested too deeply.
    Elided,
    /// Any other value, by type name (functions, threads, userdata).
    Other(String),
}

/// Converts `value`; `path` holds the tables being dumped around it.
fn own(value: &Value, path: &mut Vec<*const c_void>) -> Owned {
    match value {
        Value::Nil => Owned::Nil,
        Value::Boolean(b) => Owned::Bool(*b),
        Value::Integer(i) => Owned::Int(*i),
        Value::Number(n) => Owned::Num(format!("{n:?}")),
        Value::String(s) => Owned::Str(String::from_utf8_lossy(&s.as_bytes()).into_owned()),
        Value::Table(t) => {
            let ptr = t.to_pointer();
            if path.len() >= DUMP_DEPTH || path.contains(&ptr) {
                return Owned::Elided;
            }
            path.push(ptr);
            let mut entries: Vec<(Owned, Owned)> = t
                .pairs::<Value, Value>()
                .map(|pair| match pair {
                    Ok((k, v)) => (own(&k, path), own(&v, path)),
                    Err(e) => (Owned::Other(format!("error: {e}")), Owned::Nil),
                })
                .collect();
            path.pop();
            entries.sort_by_cached_key(|(k, _)| format!("{k:?}"));
            Owned::Table {
                meta: t.metatable().is_some(),
                entries,
            }
        }
        other => Owned::Other(other.type_name().to_owned()),
    }
}

/// A program's values, converted on the thread of the VM that produced them (so that an isle
/// can send them back from [`Isle::eval`]).
#[derive(Debug, Clone, PartialEq)]
struct Dumped(Vec<Owned>);

impl FromLuaMulti for Dumped {
    fn from_lua_multi(values: MultiValue, _lua: &Lua) -> mlua::Result<Self> {
        let mut path = Vec::new();
        Ok(Dumped(values.iter().map(|v| own(v, &mut path)).collect()))
    }
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The values it returned.
    Values(Dumped),
    /// A Lua error: its kind and message (without traceback, addresses masked).
    Error(LuaErrorKind, String),
    /// An isle failure that is not a Lua error (a panic, a shutdown): always a mismatch.
    Isle(String),
}

impl Outcome {
    /// Whether the program failed.
    fn is_error(&self) -> bool {
        !matches!(self, Outcome::Values(_))
    }
}

impl From<LuaError> for Outcome {
    fn from(e: LuaError) -> Self {
        Outcome::Error(e.kind(), mask_addresses(e.message()))
    }
}

impl From<IsleError> for Outcome {
    fn from(e: IsleError) -> Self {
        match e {
            IsleError::Lua(e) => e.into(),
            other => Outcome::Isle(other.to_string()),
        }
    }
}

/// Replaces the hex digits after each `0x` with `?`: an error value without `__tostring`
/// reaches the message as its address.
fn mask_addresses(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at + 2]);
        rest = &rest[at + 2..];
        let digits = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        if digits > 0 {
            out.push('?');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Runs `src` on `lua` as the isle's `eval` does (same chunk name), evaluating to a
/// `MultiValue` converted in place.
fn run_on(lua: &Lua, src: &str) -> Outcome {
    match lua.load(src).set_name(src).eval::<MultiValue>() {
        Ok(values) => {
            let mut path = Vec::new();
            Outcome::Values(Dumped(values.iter().map(|v| own(v, &mut path)).collect()))
        }
        Err(e) => LuaError::from(e).into(),
    }
}

/// Runs `src` on a fresh plain VM.
fn run_plain(src: &str) -> Outcome {
    run_on(&Lua::new(), src)
}

/// Runs `src` on a fresh isle, through `exec` with the plain side's code.
fn run_isle_exec(src: &str) -> Outcome {
    let isle = match Isle::spawn(|_| Ok(())) {
        Ok(isle) => isle,
        Err(e) => return Outcome::Isle(format!("spawn: {e}")),
    };
    let src = src.to_owned();
    let outcome = isle
        .exec(move |lua| Ok(run_on(lua, &src)))
        .unwrap_or_else(Outcome::from);
    finish(isle, outcome)
}

/// Runs `src` on a fresh isle, through `eval`.
fn run_isle_eval(src: &str) -> Outcome {
    let isle = match Isle::spawn(|_| Ok(())) {
        Ok(isle) => isle,
        Err(e) => return Outcome::Isle(format!("spawn: {e}")),
    };
    let outcome = match isle.eval::<Dumped>(src) {
        Ok(values) => Outcome::Values(values),
        Err(e) => e.into(),
    };
    finish(isle, outcome)
}

/// Shuts `isle` down; a failure to do so cleanly replaces `outcome`.
fn finish(isle: Isle, outcome: Outcome) -> Outcome {
    match isle.shutdown() {
        Ok(()) => outcome,
        Err(e) => Outcome::Isle(format!("shutdown: {e}")),
    }
}

/// One program and how each side ran it.
#[derive(Debug)]
struct Case {
    seed: u64,
    src: String,
    plain: Outcome,
    exec: Outcome,
    eval: Outcome,
}

impl Case {
    /// Generates and runs the program for `seed` on all three sides, under the hang guard.
    fn run(seed: u64) -> Case {
        let known = std::env::var_os("MLUA_ISLE_FUZZ_KNOWN").is_some_and(|v| v != "0");
        within_hang_guard(move || {
            let src = if known {
                lua_gen::program_with_known_differences(seed)
            } else {
                lua_gen::program(seed)
            };
            Case {
                seed,
                plain: run_plain(&src),
                exec: run_isle_exec(&src),
                eval: run_isle_eval(&src),
                src,
            }
        })
    }

    /// Whether both isle runs match the plain one.
    fn agrees(&self) -> bool {
        self.plain == self.exec && self.plain == self.eval
    }

    /// The full report of a mismatch, telling a nondeterministic program (two plain runs
    /// differ) from a difference between an isle and plain Lua.
    fn report(&self) -> String {
        let again = run_plain(&self.src);
        let verdict = if again == self.plain {
            "plain Lua is repeatable: a difference between an isle and plain Lua"
        } else {
            "plain Lua differs from itself: the generator made a nondeterministic program"
        };
        let mut out = String::new();
        let _ = writeln!(out, "=== mismatch at seed {} ({verdict})", self.seed);
        let _ = writeln!(out, "--- program:\n{}", self.src);
        let _ = writeln!(out, "--- plain: {:?}", self.plain);
        if self.exec != self.plain {
            let _ = writeln!(out, "--- isle exec: {:?}", self.exec);
        }
        if self.eval != self.plain {
            let _ = writeln!(out, "--- isle eval: {:?}", self.eval);
        }
        out
    }
}

/// Counts of a fuzzing run.
#[derive(Debug, Default)]
struct Stats {
    programs: u64,
    errors: u64,
    mismatched_seeds: Vec<u64>,
}

impl Stats {
    /// Counts `case`, printing it in full if it is one of the first mismatches.
    fn record(&mut self, case: &Case) {
        self.programs += 1;
        if case.plain.is_error() {
            self.errors += 1;
        }
        if !case.agrees() {
            if self.mismatched_seeds.len() < PRINTED_MISMATCHES {
                eprintln!("{}", case.report());
            }
            self.mismatched_seeds.push(case.seed);
        }
    }

    /// Fails the test when any program mismatched.
    #[track_caller]
    fn assert_clean(&self, elapsed: Duration) {
        eprintln!(
            "fuzz_differential: {} programs in {elapsed:.2?} ({} ended in an error), {} mismatches",
            self.programs,
            self.errors,
            self.mismatched_seeds.len(),
        );
        assert!(
            self.mismatched_seeds.is_empty(),
            "{} of {} programs behaved differently in an isle; seeds: {:?}",
            self.mismatched_seeds.len(),
            self.programs,
            self.mismatched_seeds,
        );
    }
}

/// Reads a number from the environment.
#[track_caller]
fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {text:?}")),
    )
}

#[test]
fn generated_programs_give_the_same_result_in_an_isle_as_in_plain_lua() {
    let cases = env_u64("MLUA_ISLE_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let base = env_u64("MLUA_ISLE_FUZZ_SEED").unwrap_or(0);
    let start = Instant::now();
    let mut stats = Stats::default();
    for seed in base..base.saturating_add(cases) {
        stats.record(&Case::run(seed));
    }
    stats.assert_clean(start.elapsed());
}

#[test]
#[ignore = "long mode: runs for MLUA_ISLE_FUZZ_SECS seconds (default 60)"]
fn generated_programs_agree_for_a_long_while() {
    let secs = env_u64("MLUA_ISLE_FUZZ_SECS").unwrap_or(DEFAULT_SECS);
    let base = env_u64("MLUA_ISLE_FUZZ_SEED").unwrap_or(1 << 32);
    let budget = Duration::from_secs(secs);
    let start = Instant::now();
    let mut stats = Stats::default();
    let mut seed = base;
    while start.elapsed() < budget {
        stats.record(&Case::run(seed));
        seed = seed.wrapping_add(1);
    }
    stats.assert_clean(start.elapsed());
}

#[test]
fn the_generator_is_deterministic_and_programs_end_with_a_return() {
    for seed in 0..50 {
        let src = lua_gen::program(seed);
        assert_eq!(src, lua_gen::program(seed), "seed {seed}");
        let last = src.trim_end().lines().last().unwrap();
        assert!(last.starts_with("return LOG"), "seed {seed}: {last}");
    }
}

#[test]
fn addresses_are_masked_in_messages() {
    assert_eq!(
        mask_addresses("error object is a table: 0x55d0c1a2b3c0 value"),
        "error object is a table: 0x? value"
    );
    assert_eq!(mask_addresses("0x"), "0x");
    assert_eq!(mask_addresses("no address"), "no address");
}
