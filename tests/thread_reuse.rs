//! Spare threads: an isle starts on the thread that the last isle with the same thread name
//! and stack size left, and neither its scripts nor its host code can tell.

mod common;

use std::collections::HashSet;
use std::sync::{mpsc, Arc};
use std::thread::{self, ThreadId};
use std::time::Duration;

use common::*;
use mlua_isle::mlua::{Lua, LuaOptions, StdLib};
use mlua_isle::{CancelToken, Isle, IsleBuilder, IsleError, IslePool, Recycle};

/// Starts and shuts down an isle on a thread named `name`, so that the name came up before: a
/// thread serving the next isle with it waits as a spare when done.
fn warm(name: &str) {
    Isle::builder()
        .thread_name(name)
        .spawn(|_| Ok(()))
        .expect("isle starts")
        .shutdown()
        .unwrap();
}

/// Starts an isle from `builder` and returns it with the id of its thread.
fn spawn_on(builder: IsleBuilder) -> (Isle, ThreadId) {
    builder
        .spawn_with(|_| Ok(thread::current().id()))
        .expect("isle starts")
}

#[test]
fn an_isle_starts_on_the_thread_the_last_one_with_its_name_left() {
    within_hang_guard(|| {
        warm("tr-same");
        let (first, thread) = spawn_on(Isle::builder().thread_name("tr-same"));
        first.shutdown().unwrap();
        let (second, again) = spawn_on(Isle::builder().thread_name("tr-same"));
        assert_eq!(again, thread);
        let name = second
            .exec(|_| Ok(thread::current().name().map(str::to_owned)))
            .unwrap();
        assert_eq!(name.as_deref(), Some("tr-same"));
        second.shutdown().unwrap();
    });
}

/// A thread whose name did not come up before (an isle named once, say) ends when done: it
/// would wait for nothing.
#[test]
fn an_isle_named_once_leaves_no_spare() {
    within_hang_guard(|| {
        let (first, thread) = spawn_on(Isle::builder().thread_name("tr-once"));
        first.shutdown().unwrap();
        let (second, elsewhere) = spawn_on(Isle::builder().thread_name("tr-once"));
        assert_ne!(elsewhere, thread);
        second.shutdown().unwrap();
        // The name has come up now: this one's thread waits for the next.
        let (third, again) = spawn_on(Isle::builder().thread_name("tr-once"));
        assert_eq!(again, elsewhere);
        third.shutdown().unwrap();
    });
}

#[test]
fn an_isle_with_another_name_or_stack_size_gets_another_thread() {
    within_hang_guard(|| {
        warm("tr-key");
        let (first, thread) = spawn_on(Isle::builder().thread_name("tr-key"));
        first.shutdown().unwrap();
        let (other_name, elsewhere) = spawn_on(Isle::builder().thread_name("tr-key-other"));
        assert_ne!(elsewhere, thread);
        other_name.shutdown().unwrap();
        let (other_stack, elsewhere) =
            spawn_on(Isle::builder().thread_name("tr-key").stack_size(4 << 20));
        assert_ne!(elsewhere, thread);
        other_stack.shutdown().unwrap();
        let (same, again) = spawn_on(Isle::builder().thread_name("tr-key"));
        assert_eq!(again, thread);
        same.shutdown().unwrap();
    });
}

#[test]
fn a_dropped_isle_leaves_its_thread_to_the_next_one_too() {
    within_hang_guard(|| {
        warm("tr-dropped");
        let (first, thread) = spawn_on(Isle::builder().thread_name("tr-dropped"));
        let (closed_tx, closed) = mpsc::channel::<()>();
        first
            .exec(move |lua| {
                // Dropped as the VM closes.
                struct Closed(mpsc::Sender<()>);
                impl Drop for Closed {
                    fn drop(&mut self) {
                        let _ = self.0.send(());
                    }
                }
                lua.set_app_data(Closed(closed_tx));
                Ok(())
            })
            .unwrap();
        drop(first);
        closed.recv_timeout(HANG).unwrap();
        // The thread offers itself right after the VM closed; an isle spawned before that
        // gets a thread of its own, kept busy here so that it cannot be the next spare.
        let mut missed = Vec::new();
        let mut reused = false;
        for _ in 0..200 {
            let (isle, on) = spawn_on(Isle::builder().thread_name("tr-dropped"));
            if on == thread {
                reused = true;
                isle.shutdown().unwrap();
                break;
            }
            missed.push(isle);
        }
        assert!(reused, "the dropped isle's thread never served again");
    });
}

#[test]
fn a_script_on_a_reused_thread_finds_a_fresh_vm() {
    within_hang_guard(|| {
        warm("tr-fresh");
        let (first, thread) = spawn_on(
            Isle::builder()
                .thread_name("tr-fresh")
                .memory_limit(2 << 20)
                .timeout(Duration::from_secs(5)),
        );
        first
            .eval::<()>("leftover = 1; string.leftover = true; setmetatable(_G, {})")
            .unwrap();
        let stopped = first
            .request()
            .timeout(Duration::from_millis(20))
            .eval::<()>("while true do end")
            .unwrap_err();
        assert!(stopped.is_timeout());
        let cancel = CancelToken::new();
        let stuck = first
            .request()
            .token(&cancel)
            .spawn_eval::<()>("while true do end")
            .unwrap();
        cancel.cancel();
        assert!(stuck.wait().unwrap_err().is_cancelled());
        first.shutdown().unwrap();

        let (second, again) = spawn_on(Isle::builder().thread_name("tr-fresh"));
        assert_eq!(again, thread);
        let fresh: (bool, bool, bool) = second
            .eval("return leftover == nil, string.leftover == nil, getmetatable(_G) == nil")
            .unwrap();
        assert_eq!(fresh, (true, true, true));
        // No memory limit and no default timeout any more.
        let big: usize = second
            .eval("local s = string.rep('x', 8 * 1024 * 1024) return #s")
            .unwrap();
        assert_eq!(big, 8 << 20);
        let no_deadline = second.exec(|_| Ok(mlua_isle::current_deadline())).unwrap();
        assert!(no_deadline.is_none());
        // Interrupts reach the code now on the thread.
        let cancel = CancelToken::new();
        let looping = second
            .request()
            .token(&cancel)
            .spawn_eval::<()>("while true do end")
            .unwrap();
        cancel.cancel();
        assert!(looping.wait().unwrap_err().is_cancelled());
        let timed = second
            .request()
            .timeout(Duration::from_millis(20))
            .eval::<()>("while true do end")
            .unwrap_err();
        assert!(timed.is_timeout());
        assert_eq!(second.eval::<i64>("1 + 1").unwrap(), 2);
        second.shutdown().unwrap();
    });
}

/// The thread makes the next VM ahead of time like the last isle's. An isle made from other
/// settings, or by a factory, does not take that thread (it would wait for a VM it cannot use
/// and close it before making its own): it gets another one, and the spare stays for an isle
/// that can use its VM. A spare that made nothing serves any isle.
#[test]
fn the_next_isle_gets_a_vm_made_from_its_own_settings() {
    within_hang_guard(|| {
        warm("tr-libs");
        let math = || {
            Isle::builder()
                .thread_name("tr-libs")
                .std_libs(StdLib::MATH)
        };
        let all = || Isle::builder().thread_name("tr-libs");
        let (math_only, math_thread) = spawn_on(math());
        math_only.shutdown().unwrap();
        let (math_only, again) = spawn_on(math());
        assert_eq!(again, math_thread);
        assert!(math_only.eval::<bool>("string == nil").unwrap());
        math_only.shutdown().unwrap();
        let (everything, all_thread) = spawn_on(all());
        assert_ne!(
            all_thread, math_thread,
            "took the spare that made a VM with `math` only"
        );
        everything.shutdown().unwrap();
        let (everything, again) = spawn_on(all());
        assert_eq!(again, all_thread);
        assert!(everything
            .eval::<bool>("string ~= nil and math ~= nil")
            .unwrap());
        everything.shutdown().unwrap();
        // Each finds the spare that made its VM.
        let (math_only, again) = spawn_on(math());
        assert_eq!(again, math_thread);
        assert!(math_only.eval::<bool>("string == nil").unwrap());
        math_only.shutdown().unwrap();
        let (everything, again) = spawn_on(all());
        assert_eq!(again, all_thread);
        assert!(everything
            .eval::<bool>("string ~= nil and math ~= nil")
            .unwrap());
        everything.shutdown().unwrap();
        let factory = || {
            Isle::builder()
                .thread_name("tr-libs")
                .factory(|| Lua::new_with(StdLib::STRING, LuaOptions::new()))
        };
        let (made, made_thread) = spawn_on(factory());
        assert!(made_thread != math_thread && made_thread != all_thread);
        assert!(made.eval::<bool>("math == nil and string ~= nil").unwrap());
        made.shutdown().unwrap();
        // Its thread made nothing: the next factory's isle takes it, while an isle made from
        // settings still takes the spare that made its VM.
        let (math_only, again) = spawn_on(math());
        assert_eq!(again, math_thread);
        assert!(math_only
            .eval::<bool>("string == nil and math ~= nil")
            .unwrap());
        math_only.shutdown().unwrap();
        let (made, again) = spawn_on(factory());
        assert_eq!(again, made_thread);
        assert!(made.eval::<bool>("math == nil and string ~= nil").unwrap());
        made.shutdown().unwrap();
    });
}

/// The interrupt machinery of an isle that ended no longer points at its thread: a token of
/// the old isle, cancelled while the new one runs a request there, does not touch it.
#[test]
fn a_token_of_the_last_isle_does_not_reach_the_next_one() {
    within_hang_guard(|| {
        warm("tr-stale");
        let (first, thread) = spawn_on(Isle::builder().thread_name("tr-stale"));
        let old = CancelToken::new();
        let (entered_tx, entered) = mpsc::channel::<()>();
        let (leave_tx, leave) = mpsc::channel::<()>();
        let held = first
            .request()
            .token(&old)
            .spawn_exec(move |lua| {
                lua.load("local n = 0 for i = 1, 1000 do n = n + i end")
                    .exec()?;
                Ok(())
            })
            .unwrap();
        held.wait().unwrap();
        first.shutdown().unwrap();

        let (second, again) = Isle::builder()
            .thread_name("tr-stale")
            .spawn_with(move |lua| {
                let entered = lua.create_function(move |_, ()| {
                    let _ = entered_tx.send(());
                    Ok(())
                })?;
                let leave = lua.create_function(move |_, ()| {
                    let _ = leave.recv_timeout(HANG);
                    Ok(())
                })?;
                lua.globals().set("entered", entered)?;
                lua.globals().set("leave", leave)?;
                Ok(thread::current().id())
            })
            .unwrap();
        assert_eq!(again, thread);
        let running = second
            .spawn_eval::<i64>(
                "entered() leave() local n = 0 for i = 1, 100000 do n = n + 1 end return n",
            )
            .unwrap();
        entered.recv_timeout(HANG).unwrap();
        old.cancel();
        leave_tx.send(()).unwrap();
        assert_eq!(running.wait().unwrap(), 100_000);
        second.shutdown().unwrap();
    });
}

#[cfg(target_os = "linux")]
#[test]
fn a_waiting_spare_does_not_show_the_name_of_an_isle() {
    within_hang_guard(|| {
        warm("tr-shown");
        let named = || {
            thread_names()
                .iter()
                .filter(|name| *name == "tr-shown")
                .count()
        };
        let (isle, _) = spawn_on(Isle::builder().thread_name("tr-shown"));
        assert_eq!(named(), 1);
        isle.shutdown().unwrap();
        assert_eq!(named(), 0);
        let (isle, _) = spawn_on(Isle::builder().thread_name("tr-shown"));
        assert_eq!(named(), 1);
        isle.shutdown().unwrap();
    });
}

#[test]
fn an_init_that_fails_leaves_a_thread_the_next_isle_can_use() {
    within_hang_guard(|| {
        warm("tr-init");
        let (failed_on_tx, failed_on) = mpsc::channel();
        let err = Isle::builder()
            .thread_name("tr-init")
            .spawn(move |lua| {
                failed_on_tx.send(thread::current().id()).unwrap();
                lua.load("error('bad init')").exec()
            })
            .unwrap_err();
        assert!(matches!(err, IsleError::Init(_)));
        let failed_on = failed_on.recv_timeout(HANG).unwrap();
        let (isle, on) = spawn_on(Isle::builder().thread_name("tr-init"));
        assert_eq!(on, failed_on);
        assert_eq!(isle.eval::<i64>("2").unwrap(), 2);
        isle.shutdown().unwrap();
    });
}

#[test]
fn a_thread_name_with_a_nul_byte_is_a_configuration_error() {
    let err = Isle::builder()
        .thread_name("tr\0nul")
        .spawn(|_| Ok(()))
        .unwrap_err();
    assert!(matches!(err, IsleError::Config(_)), "{err:?}");
}

/// A thread that a pool let go of (a retired member's) and that serves a plain isle now is no
/// longer taken for the pool's: a checkout from there is not refused as a wait for itself.
#[test]
fn a_thread_a_pool_let_go_of_is_not_taken_for_the_pool() {
    within_hang_guard(|| {
        let pool = Arc::new(
            IslePool::builder()
                .size(1)
                .thread_name("tr-pool")
                .recycle(Recycle::new().after_requests(1))
                .spawn(|_| Ok(()))
                .unwrap(),
        );
        let mut served = HashSet::new();
        // Each request retires the member that ran it; its thread becomes a spare, which the
        // member's replacement or the isle below takes.
        for _ in 0..200 {
            served.insert(pool.exec(|_| Ok(thread::current().id())).unwrap());
            let (isle, on) = spawn_on(Isle::builder().thread_name("tr-pool-0"));
            if served.contains(&on) {
                let pool = pool.clone();
                let checkout = isle
                    .exec(move |_| Ok(pool.checkout_timeout(HANG).map(drop)))
                    .unwrap();
                assert!(checkout.is_ok(), "{checkout:?}");
                isle.shutdown().unwrap();
                return;
            }
            isle.shutdown().unwrap();
        }
        panic!("no isle started on a thread the pool let go of");
    });
}

/// A coroutine resumed from Rust by a finalizer of the last VM on the thread (its final
/// collection, after the interrupt machinery let go of it) is not left recorded for the next
/// isle there: that one's own resumes from Rust, and its interrupts, never look at a
/// coroutine of a closed VM.
#[test]
fn a_coroutine_resumed_from_rust_as_the_last_vm_closes_is_not_left_to_the_next_isle() {
    within_hang_guard(|| {
        warm("tr-anchor");
        let (first, thread) = Isle::builder()
            .thread_name("tr-anchor")
            .spawn_with(|lua| {
                let resume = lua.create_function(|_, co: mlua_isle::mlua::Thread| {
                    co.resume::<()>(())?;
                    Ok(())
                })?;
                lua.globals().set("rust_resume", resume)?;
                Ok(thread::current().id())
            })
            .unwrap();
        // Garbage only the VM's final collection (as it closes) finalizes.
        first
            .eval::<()>(
                "collectgarbage('stop')
                 setmetatable({}, {__gc = function()
                     rust_resume(coroutine.create(function() end))
                 end})",
            )
            .unwrap();
        first.shutdown().unwrap();
        let (second, again) = Isle::builder()
            .thread_name("tr-anchor")
            .spawn_with(|lua| {
                let co = lua.create_thread(lua.create_function(|_, ()| Ok(()))?)?;
                co.resume::<()>(())?;
                Ok(thread::current().id())
            })
            .expect("a resume from Rust in the next isle's init");
        assert_eq!(again, thread);
        // And in a request, with a cancel arming what is recorded.
        let cancel = CancelToken::new();
        let stuck = second
            .request()
            .token(&cancel)
            .spawn_exec(|lua| {
                let co = lua.create_thread(lua.load("while true do end").into_function()?)?;
                co.resume::<()>(())
            })
            .unwrap();
        cancel.cancel();
        assert!(stuck.wait().unwrap_err().is_cancelled());
        second.shutdown().unwrap();
    });
}

/// The crate unblocks an isle's interrupt signal on its thread; it blocks it again when the
/// isle is done with the thread, so that the next isle there (started from a thread that
/// blocks the signal, and not interrupted by it) finds the mask it would have inherited.
#[cfg(all(unix, not(feature = "luau")))]
#[test]
fn the_interrupt_signal_is_blocked_again_for_the_next_isle() {
    within_hang_guard(|| {
        warm("tr-mask");
        fn urg_blocked() -> bool {
            // SAFETY: reads the calling thread's mask into a zeroed set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                libc::sigismember(&set, libc::SIGURG) == 1
            }
        }
        // SAFETY: blocks SIGURG on this (the test's own) thread only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGURG);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let (first, thread) = spawn_on(Isle::builder().thread_name("tr-mask"));
        assert!(
            !first.exec(|_| Ok(urg_blocked())).unwrap(),
            "the isle's signal reaches it"
        );
        first.shutdown().unwrap();
        let (second, again) = spawn_on(
            Isle::builder()
                .thread_name("tr-mask")
                .interrupt(mlua_isle::Interrupt::Hook { every: 1000 }),
        );
        assert_eq!(again, thread);
        assert!(
            second.exec(|_| Ok(urg_blocked())).unwrap(),
            "the next isle inherits its spawner's mask, not the last isle's change"
        );
        second.shutdown().unwrap();
    });
}

/// A new thread starts with the signal mask of the thread that creates it: an isle on a spare
/// has the mask of the thread that started it too, not that of the thread that started the
/// spare's first isle.
#[cfg(unix)]
#[test]
fn an_isle_on_a_spare_has_the_signal_mask_of_the_thread_that_started_it() {
    within_hang_guard(|| {
        warm("tr-mask-start");
        fn usr2_blocked() -> bool {
            // SAFETY: reads the calling thread's mask into a zeroed set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                libc::sigismember(&set, libc::SIGUSR2) == 1
            }
        }
        fn set_usr2(how: libc::c_int) {
            // SAFETY: changes the calling thread's mask only.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::pthread_sigmask(how, &set, std::ptr::null_mut());
            }
        }
        // Each isle started from a thread of its own, which blocks SIGUSR2 or not.
        let start = |block: bool| {
            thread::spawn(move || {
                set_usr2(if block {
                    libc::SIG_BLOCK
                } else {
                    libc::SIG_UNBLOCK
                });
                let (isle, thread) = spawn_on(Isle::builder().thread_name("tr-mask-start"));
                let blocked = isle.exec(|_| Ok(usr2_blocked())).unwrap();
                isle.shutdown().unwrap();
                (thread, blocked)
            })
            .join()
            .unwrap()
        };
        let (thread, blocked) = start(false);
        assert!(!blocked);
        let (again, blocked) = start(true);
        assert_eq!(again, thread);
        assert!(
            blocked,
            "the isle lets through a signal the thread that started it blocks"
        );
        let (again, blocked) = start(false);
        assert_eq!(again, thread);
        assert!(
            !blocked,
            "the isle blocks a signal the thread that started it lets through"
        );
    });
}
