//! A process forked after an isle ended: its child has none of the parent's spare threads,
//! and an isle it starts gets a thread of its own instead of waiting for one that is not there.

#![cfg(target_os = "linux")]

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use mlua_isle::Isle;

#[test]
fn an_isle_started_in_a_forked_child_does_not_wait_for_the_parents_spare() {
    within_hang_guard(|| {
        // The name came up before: the thread of the next isle with it waits as a spare.
        Isle::builder()
            .thread_name("fork-spare")
            .spawn(|_| Ok(()))
            .unwrap()
            .shutdown()
            .unwrap();
        let first = Isle::builder()
            .thread_name("fork-spare")
            .spawn(|_| Ok(()))
            .unwrap();
        first.shutdown().unwrap();
        // The parent has a spare named `fork-spare` now.
        // SAFETY: the child only starts an isle and leaves with `_exit`; SIGALRM (default
        // action: terminate) ends it if the isle never starts.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: arms this (child) process's alarm.
            unsafe { libc::alarm(10) };
            let code = match Isle::builder().thread_name("fork-spare").spawn(|_| Ok(())) {
                Ok(isle) => match isle.eval::<i64>("1 + 1") {
                    Ok(2) => 0,
                    _ => 2,
                },
                Err(_) => 3,
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's isle did not start (status {status:#x}: {})",
            if libc::WIFSIGNALED(status) {
                "killed by its alarm: it hung"
            } else {
                "failed"
            }
        );
    });
}

/// Forks, runs `f` in the child and returns the child's exit status.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `f` (which starts isles) and leaves with `_exit`; its alarm
    // (default action: terminate) ends it if that hangs.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        // SAFETY: arms this (child) process's alarm.
        unsafe { libc::alarm(10) };
        let code = f();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(waited, child);
    status
}

/// The exit code of a child's `status`; 100 + the signal for one killed by a signal.
fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        100 + libc::WTERMSIG(status)
    }
}

/// Puts the children this process makes from now on into a new pid namespace (each of them
/// pid 1 there); false where that is not allowed.
fn new_pid_namespace() -> bool {
    // SAFETY: changes only which namespace this process's future children get.
    unsafe { libc::unshare(libc::CLONE_NEWPID) == 0 }
}

#[test]
fn a_child_with_the_pid_its_parent_had_does_not_take_the_parents_spares() {
    within_hang_guard(|| {
        let status = in_child(|| {
            if !new_pid_namespace() {
                return 77;
            }
            // Pid 1 in its namespace: it leaves a spare named `pidns-spare`.
            exit_code(in_child(|| {
                assert_eq!(std::process::id(), 1);
                for _ in 0..2 {
                    Isle::builder()
                        .thread_name("pidns-spare")
                        .spawn(|_| Ok(()))
                        .unwrap()
                        .shutdown()
                        .unwrap();
                }
                if !new_pid_namespace() {
                    return 78;
                }
                // Pid 1 too, with the parent's list but none of its threads. (A pid 1 ignores
                // its alarm: it gives up waiting by itself.)
                exit_code(in_child(|| {
                    assert_eq!(std::process::id(), 1);
                    let (tx, rx) = mpsc::channel();
                    thread::spawn(move || {
                        let started = Isle::builder()
                            .thread_name("pidns-spare")
                            .spawn(|_| Ok(()))
                            .is_ok_and(|isle| isle.eval::<i64>("1 + 1").ok() == Some(2));
                        let _ = tx.send(started);
                    });
                    match rx.recv_timeout(Duration::from_secs(5)) {
                        Ok(true) => 0,
                        Ok(false) => 2,
                        Err(_) => 1,
                    }
                }))
            }))
        });
        match exit_code(status) {
            // No pid namespaces for this user: nothing to check.
            77 | 78 => eprintln!("skipped: pid namespaces are not available"),
            0 => {}
            1 => panic!(
                "the grandchild's isle never started: it was handed to a spare that is not there"
            ),
            code => panic!(
                "the grandchild's isle did not start (exit code {code}{})",
                if code == 100 + libc::SIGALRM {
                    ": killed by its alarm, it hung"
                } else {
                    ""
                }
            ),
        }
    });
}
