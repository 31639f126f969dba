//! Fuzzing the sandbox: generated Lua programs (see `common::lua_gen`), each followed by
//! escape attempts, run one after another on the same sandboxed isle
//! ([`IsleBuilder::sandboxed`](mlua_isle::IsleBuilder::sandboxed) with a short deadline).
//!
//! Properties, for every program:
//! - it ends — with values, a Lua error, `Timeout` or a memory error — within the hang guard,
//!   and the isle is never given up on (generated code has no C-level loops);
//! - no escape: the canary (a host function reachable only from the registry) is never
//!   called, and no file appears where `io`/`os` would have written one;
//! - no leak: the next request finds the libraries intact, the host's table unchanged and an
//!   empty environment.
//!
//! - `MLUA_ISLE_FUZZ_CASES` (default 300): how many programs the default test runs.
//! - `MLUA_ISLE_FUZZ_SEED` (default 0): the first seed; programs use consecutive seeds.
//! - `MLUA_ISLE_FUZZ_SECS`: how long the ignored long mode runs (default 60), with
//!   `cargo test --test fuzz_sandbox -- --ignored`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{lua_gen, within_hang_guard};
use mlua_isle::{Isle, IsleError, LuaErrorKind};

/// Programs the default test runs, unless `MLUA_ISLE_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: u64 = 300;

/// How long the long mode runs, unless `MLUA_ISLE_FUZZ_SECS` says otherwise.
const DEFAULT_SECS: u64 = 60;

/// The deadline of each program (a short one keeps the runs fast; generated loops are small).
const DEADLINE: Duration = Duration::from_millis(500);

/// Escape attempts: each runs under `pcall` after the program, and calls `escaped(how)` if
/// it got hold of something it should not have. `escaped` itself is only in the registry.
const ESCAPES: &[&str] = &[
    "local r = debug.getregistry() r['mlua_isle.fuzz.canary']('registry')",
    "local f = io.open(CANARY_PATH, 'w') f:write('x') f:close() escaped('io')",
    "os.execute('touch ' .. CANARY_PATH) escaped('os.execute')",
    "local v = os.getenv('HOME') if v then escaped('os.getenv') end",
    "require('io') escaped('require')",
    "package.loadlib('libc.so.6', 'system') escaped('loadlib')",
    "local f = load(string.dump(function() return 1 end)) if f then escaped('dump') end",
    "local f = load('return 1') if f then escaped('load without env') end",
    "local f = loadstring('return 1') if f then escaped('loadstring') end",
    "local g = getfenv(0) if g then escaped('getfenv') end",
    "setfenv(1, {}) escaped('setfenv')",
    "dofile(CANARY_PATH) escaped('dofile')",
    "loadfile(CANARY_PATH) escaped('loadfile')",
    "local p = newproxy(true) getmetatable(p).__gc = function() end escaped('newproxy')",
    "setmetatable({}, { __gc = function() end }) escaped('__gc')",
    "local mt = { __gc = true } setmetatable({}, mt) mt.__gc = function() end escaped('__gc placeholder')",
    "collectgarbage('stop') escaped('collectgarbage stop')",
    "collectgarbage('generational') escaped('collectgarbage generational')",
    "string.rep = nil escaped('string.rep')",
    "rawset(string, 'rep', nil) escaped('rawset string')",
    "table.insert(string, 1) escaped('table.insert string')",
    "getmetatable('').__index = {} escaped('string metatable')",
    "rawset(getmetatable(''), '__index', {}) escaped('rawset string metatable')",
    "secret.value = 0 escaped('host table')",
    "rawset(secret, 'value', 0) escaped('rawset host table')",
    "local _, s = pairs(string) if type(s) == 'table' then s.rep = nil escaped('pairs state') end",
    "_G = nil local g = _G if g ~= nil then g.leaked = 1 escaped('real _G') end",
    "setmetatable(_G, {}) escaped('_G metatable')",
    "local m = getmetatable(_G) if type(m) == 'table' then escaped('env metatable') end",
    "local j = jit if j then escaped('jit') end",
    "local d = debug if d then escaped('debug') end",
];

/// What the next request checks: everything as `init` left it, and an empty environment.
const PROBE: &str = r#"
local clean = string.rep('a', 2) == 'aa' and tostring(12) == '12'
  and type(pcall) == 'function' and type(setmetatable) == 'function'
  and secret.value == 42 and ('x'):upper() == 'X'
for k in next, _G do
  if k ~= '_G' then clean = false end
end
return clean
"#;

/// One program and its escape attempts, as one chunk.
fn case_source(seed: u64) -> String {
    let program = lua_gen::program(seed);
    let mut src = String::new();
    // The program runs as a function so that its `return` does not end the chunk.
    src.push_str("local ok, err = pcall(function(...)\n");
    src.push_str(&program);
    src.push_str("\nend)\n");
    // Every escape, in an order that depends on the seed.
    let n = ESCAPES.len() as u64;
    for i in 0..n {
        let attempt = ESCAPES[((seed.wrapping_mul(7) + i * 13) % n) as usize];
        src.push_str("pcall(function() ");
        src.push_str(attempt);
        src.push_str(" end)\n");
    }
    src.push_str("return ok\n");
    src
}

/// The sandboxed isle programs run on, with the canary in the registry.
fn isle(escapes: Arc<AtomicUsize>, canary_path: String) -> Isle {
    Isle::builder()
        .sandboxed()
        .timeout(DEADLINE)
        .grace_period(Duration::from_millis(500))
        .spawn(move |lua| {
            let hits = escapes.clone();
            let canary = lua.create_function(move |_, how: String| {
                hits.fetch_add(1, Ordering::SeqCst);
                eprintln!("escape: {how}");
                Ok(())
            })?;
            lua.set_named_registry_value("mlua_isle.fuzz.canary", &canary)?;
            // Called only by code that got past the sandbox (see `ESCAPES`).
            let hits = escapes.clone();
            let escaped = lua.create_function(move |_, how: String| {
                hits.fetch_add(1, Ordering::SeqCst);
                eprintln!("escape: {how}");
                Ok(())
            })?;
            lua.globals().set("escaped", escaped)?;
            lua.globals().set("CANARY_PATH", canary_path)?;
            lua.load("secret = { value = 42 }").exec()
        })
        .unwrap()
}

/// Counts of a run.
#[derive(Debug, Default)]
struct Tally {
    programs: u64,
    /// Requests that returned (the program itself may have failed under its `pcall`).
    completed: u64,
    /// Programs that ran to their end without an error.
    programs_ok: u64,
    lua_errors: u64,
    memory_errors: u64,
    timeouts: u64,
}

/// Runs the programs of `seeds` (or until `until` passes) on one sandboxed isle and checks the
/// properties after each.
fn run(seeds: impl Iterator<Item = u64>, until: Option<Instant>) -> Tally {
    let escapes = Arc::new(AtomicUsize::new(0));
    let canary_path = std::env::temp_dir()
        .join(format!("mlua-isle-fuzz-canary-{}", std::process::id()))
        .to_string_lossy()
        .into_owned();
    let _ = std::fs::remove_file(&canary_path);
    let isle = isle(escapes.clone(), canary_path.clone());
    let mut tally = Tally::default();
    for seed in seeds {
        if until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let src = case_source(seed);
        tally.programs += 1;
        match isle.eval::<Option<bool>>(src.as_str()) {
            Ok(ok) => {
                tally.completed += 1;
                tally.programs_ok += u64::from(ok == Some(true));
            }
            Err(IsleError::Lua(e)) if e.kind() == LuaErrorKind::Memory => tally.memory_errors += 1,
            Err(IsleError::Lua(_)) => tally.lua_errors += 1,
            Err(IsleError::Timeout) => tally.timeouts += 1,
            Err(other) => panic!("seed {seed}: unexpected {other:?}\n{src}"),
        }
        assert_eq!(
            escapes.load(Ordering::SeqCst),
            0,
            "seed {seed}: an escape reached the canary\n{src}"
        );
        assert!(
            !std::path::Path::new(&canary_path).exists(),
            "seed {seed}: a file was written\n{src}"
        );
        assert!(
            isle.eval::<bool>(PROBE).unwrap(),
            "seed {seed}: the next request saw what this one left\n{src}"
        );
    }
    tally
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn generated_programs_neither_escape_nor_leak() {
    let first = env_u64("MLUA_ISLE_FUZZ_SEED").unwrap_or(0);
    let cases = env_u64("MLUA_ISLE_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let tally = within_hang_guard(move || run(first..first + cases, None));
    assert_eq!(tally.programs, cases);
    // The programs must mostly run: a sandbox that fails everything would pass vacuously.
    assert!(tally.completed * 2 > tally.programs, "{tally:?}");
    eprintln!("{tally:?}");
}

#[test]
#[ignore = "long mode: runs for MLUA_ISLE_FUZZ_SECS seconds (default 60)"]
fn generated_programs_neither_escape_nor_leak_for_a_long_while() {
    let first = env_u64("MLUA_ISLE_FUZZ_SEED").unwrap_or(1_000_000);
    let secs = env_u64("MLUA_ISLE_FUZZ_SECS").unwrap_or(DEFAULT_SECS);
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    // Not under the hang guard (it is meant to run long); each request has its deadline.
    let tally = run(first.., Some(until));
    println!(
        "fuzz_sandbox: {tally:?} in {:.0} s (seeds from {first})",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn every_escape_attempt_is_refused_on_its_own() {
    let escapes = Arc::new(AtomicUsize::new(0));
    let path = std::env::temp_dir()
        .join(format!(
            "mlua-isle-fuzz-canary-single-{}",
            std::process::id()
        ))
        .to_string_lossy()
        .into_owned();
    let isle = isle(escapes.clone(), path.clone());
    for attempt in ESCAPES {
        let _ = isle.eval::<()>(*attempt);
        assert_eq!(escapes.load(Ordering::SeqCst), 0, "escaped: {attempt}");
        assert!(
            !std::path::Path::new(&path).exists(),
            "wrote a file: {attempt}"
        );
        assert!(isle.eval::<bool>(PROBE).unwrap(), "leaked: {attempt}");
    }
}
