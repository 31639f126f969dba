//! Lua's own test suites, each file run in a plain mlua VM and in an isle: a file that passes
//! in plain mlua but fails in an isle is something a script can tell an isle by.
//!
//! Run with: `cargo run --release --example lua_tests -- <suites>` (for another Lua version
//! than 5.4: `--no-default-features --features lua55,vendored`), where `<suites>` holds the
//! `testes/` folders of the reference Lua implementation as `5.3.6/`, `5.4.8/` and `5.5.0/`.
//! The folder matching the compiled Lua version is used; other versions have none.
//!
//! Each file runs on its own with `dofile`, after `_soft = true; _port = true; _nomsg = true;
//! _U = true` (the quick, portable mode of the suite's `all.lua`), with every standard library,
//! `debug` included. Left out: `all.lua`, `main.lua` (needs a `lua` executable), `files.lua`
//! (writes files), `big.lua`, `heavy.lua` and `verybig.lua` (minutes, gigabytes). Files that need
//! the internal `T` library skip those parts themselves. The working directory is the suite's
//! folder, for the whole process: files run one at a time.
//!
//! Prints one line per file and exits with status 1 if any file passes in plain mlua but fails
//! in an isle.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;

use mlua::{Lua, LuaOptions, StdLib};
use mlua_isle::{Isle, DEFAULT_STACK_SIZE};

/// The suite of the compiled Lua version, if there is one.
const SUITE: Option<&str> = if cfg!(feature = "lua54") {
    Some("5.4.8")
} else if cfg!(feature = "lua55") {
    Some("5.5.0")
} else if cfg!(feature = "lua53") {
    Some("5.3.6")
} else {
    None
};

/// Files not run: see the module docs.
const SKIPPED: [&str; 6] = [
    "all.lua",
    "main.lua",
    "files.lua",
    "big.lua",
    "heavy.lua",
    "verybig.lua",
];

const PRELUDE: &str = "_soft = true; _port = true; _nomsg = true; _U = true";

fn main() -> ExitCode {
    let Some(suites) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: lua_tests <folder holding 5.3.6/, 5.4.8/, 5.5.0/>");
        return ExitCode::from(2);
    };
    let Some(version) = SUITE else {
        println!("no Lua test suite for this Lua version");
        return ExitCode::SUCCESS;
    };
    let folder = suites.join(version);
    let files = match suite_files(&folder) {
        Ok(files) => files,
        Err(err) => {
            eprintln!("cannot read {}: {err}", folder.display());
            return ExitCode::from(2);
        }
    };
    // `dofile` and the files themselves open paths relative to the suite's folder.
    if let Err(err) = std::env::set_current_dir(&folder) {
        eprintln!("cannot enter {}: {err}", folder.display());
        return ExitCode::from(2);
    }
    println!("Lua {version} test suite, {} files", files.len());

    let mut results = Vec::new();
    for file in &files {
        let plain = run_plain(file);
        let isle = run_isle(file);
        flush_lua_stdout();
        println!(
            "\n{file}: plain {}, isle {}",
            verdict(&plain),
            verdict(&isle)
        );
        for (what, result) in [("plain", &plain), ("isle", &isle)] {
            if let Err(err) = result {
                println!("    {what}: {}", first_line(err));
            }
        }
        results.push((file.as_str(), plain, isle));
    }

    println!("\n{:<16} {:<6} isle", "file", "plain");
    let mut regressions = Vec::new();
    for (file, plain, isle) in &results {
        println!("{file:<16} {:<6} {}", verdict(plain), verdict(isle));
        if plain.is_ok() && isle.is_err() {
            regressions.push(*file);
        }
    }
    if regressions.is_empty() {
        println!("every file that passes in plain mlua passes in an isle");
        ExitCode::SUCCESS
    } else {
        println!(
            "pass in plain mlua, fail in an isle: {}",
            regressions.join(", ")
        );
        ExitCode::FAILURE
    }
}

/// The `.lua` files of `folder` that are run, sorted.
fn suite_files(folder: &Path) -> std::io::Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lua") && !SKIPPED.contains(&name.as_str()) {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

/// The chunk that runs `file`.
fn chunk(file: &str) -> String {
    format!("{PRELUDE}\ndofile({file:?})")
}

/// Every standard library, `debug` included.
fn new_lua() -> mlua::Result<Lua> {
    // SAFETY: the suites need the `debug` library; they are trusted code.
    Ok(unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::default()) })
}

/// Runs `file` in a plain VM, on a thread with the stack an isle's thread gets.
fn run_plain(file: &str) -> Result<(), String> {
    let code = chunk(file);
    thread::Builder::new()
        .name("plain".into())
        .stack_size(DEFAULT_STACK_SIZE)
        .spawn(move || {
            let lua = new_lua().map_err(|e| e.to_string())?;
            lua.load(code).exec().map_err(|e| e.to_string())
        })
        .expect("thread starts")
        .join()
        .unwrap_or_else(|_| Err("panicked".into()))
}

/// Runs `file` in a fresh isle with the same VM and no deadline.
fn run_isle(file: &str) -> Result<(), String> {
    let isle = Isle::builder()
        .factory(new_lua)
        // The suites load binary chunks (`load(string.dump(f))`), which a plain VM accepts.
        .allow_binary_chunks(true)
        .spawn(|_| Ok(()))
        .map_err(|e| e.to_string())?;
    let code = chunk(file);
    let result = isle
        .exec(move |lua| lua.load(code).exec())
        .map_err(|e| e.to_string());
    let _ = isle.shutdown();
    result
}

/// Writes out what the files printed (C's `stdout`, buffered apart from Rust's).
fn flush_lua_stdout() {
    if let Ok(lua) = new_lua() {
        let _ = lua.load("io.stdout:flush()").exec();
    }
}

fn verdict(result: &Result<(), String>) -> &'static str {
    if result.is_ok() {
        "ok"
    } else {
        "FAIL"
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
