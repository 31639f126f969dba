//! A process forked after an isle ended: its child has none of the parent's spare threads,
//! and an isle it starts gets a thread of its own instead of waiting for one that is not there.

#![cfg(target_os = "linux")]

mod common;

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
