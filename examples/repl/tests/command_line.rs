//! `-e` chunks, scripts and `--sandbox`, without a terminal.

use std::process::{Command, Output};

fn repl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repl"))
        .args(args)
        .output()
        .expect("the REPL starts")
}

#[test]
fn chunks_and_the_script_run_in_order_without_a_prompt() {
    let script = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("double.lua");
    std::fs::write(&script, "print(x * 2)\nreturn 'ignored'\n").unwrap();
    let out = repl(&["-e", "x = 20", "-e", "x = x + 1", script.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\nignored\n");
}

#[test]
fn a_failing_chunk_ends_the_run_with_status_1() {
    let out = repl(&["-e", "error('boom')", "-e", "print('not reached')"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("(command line):1: boom\nstack traceback:"),
        "{stderr}"
    );
}

#[test]
fn the_sandbox_keeps_globals_and_print_but_not_the_system() {
    let out = repl(&[
        "--sandbox",
        "-e",
        "print(io == nil, os.execute == nil, require == nil)",
        "-e",
        "x = 41",
        "-e",
        "print(x + 1)",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "true\ttrue\ttrue\n42\n"
    );
}
