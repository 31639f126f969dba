//! Pools: dispatch, checkout, recycling, self-healing, broadcast, statistics, shutdown.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use mlua_isle::{CancelToken, IsleBuilder, IsleError, IslePool, Recycle};

const HANG_GUARD: Duration = Duration::from_secs(10);

fn pool(size: usize) -> IslePool {
    IslePool::builder().size(size).spawn(|_| Ok(())).unwrap()
}

#[test]
fn requests_run_on_every_member() {
    let pool = IslePool::builder()
        .size(2)
        .thread_name("p")
        .spawn(|_| Ok(()))
        .unwrap();
    // Two requests that each wait for the other: they can only finish on two members.
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            pool.spawn_exec(move |_| {
                barrier.wait();
                Ok(std::thread::current().name().unwrap().to_owned())
            })
            .unwrap()
        })
        .collect();
    let mut names: Vec<String> = tasks.into_iter().map(|t| t.wait().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["p-0", "p-1"]);
}

#[test]
fn a_short_request_does_not_wait_behind_a_long_one() {
    let pool = pool(2);
    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let long = pool
        .spawn_exec(move |_| {
            started_tx.send(()).unwrap();
            release.recv().unwrap();
            Ok(())
        })
        .unwrap();
    started.recv_timeout(HANG_GUARD).unwrap();
    // With one member blocked, every short request goes to the other.
    for i in 0..100 {
        assert_eq!(pool.eval::<i64>(format!("{i}").as_str()).unwrap(), i);
    }
    release_tx.send(()).unwrap();
    long.wait().unwrap();
}

#[test]
fn a_checkout_is_exclusive_and_owned() {
    let pool = pool(2);
    let guard = pool.checkout().unwrap();
    guard.exec(|lua| lua.globals().set("mine", 1)).unwrap();
    let moved = std::thread::spawn(move || {
        let v = guard.eval::<i64>("mine").unwrap();
        drop(guard);
        v
    });
    assert_eq!(moved.join().unwrap(), 1);
    // Returned: both members can be checked out again.
    let both = [pool.checkout().unwrap(), pool.checkout().unwrap()];
    assert_eq!(pool.stats().checked_out, 2);
    drop(both);
}

#[test]
fn try_checkout_fails_when_every_member_is_taken() {
    let pool = pool(1);
    let guard = pool.try_checkout().unwrap();
    assert!(matches!(pool.try_checkout(), Err(IsleError::Full)));
    let err = pool
        .checkout_timeout(Duration::from_millis(20))
        .unwrap_err();
    assert!(err.is_timeout());
    drop(guard);
    // Returned: available again.
    let again = pool.checkout_timeout(HANG_GUARD).unwrap();
    assert_eq!(again.eval::<i64>("1").unwrap(), 1);
}

#[test]
fn a_member_is_recycled_after_n_requests() {
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_requests(2))
        .spawn(|lua| lua.globals().set("count", 0))
        .unwrap();
    let seen: Vec<i64> = (0..6)
        .map(|_| pool.eval("count = count + 1; return count").unwrap())
        .collect();
    assert_eq!(seen, [1, 2, 1, 2, 1, 2]);
    assert_eq!(pool.stats().recycled.requests, 3);
}

#[test]
fn a_cancelled_request_gets_its_member_replaced_by_default() {
    let pool = IslePool::builder()
        .size(1)
        .spawn(|lua| lua.globals().set("fresh", true))
        .unwrap();
    pool.exec(|lua| lua.globals().set("fresh", false)).unwrap();
    let token = CancelToken::new();
    let (started_tx, started) = mpsc::channel();
    let task = pool
        .request()
        .token(&token)
        .spawn_exec(move |lua| {
            started_tx.send(()).unwrap();
            lua.load("while true do end").exec()
        })
        .unwrap();
    started.recv_timeout(HANG_GUARD).unwrap();
    token.cancel();
    assert!(task.wait().unwrap_err().is_cancelled());
    assert!(pool.eval::<bool>("fresh").unwrap());
    let stats = pool.stats();
    assert_eq!((stats.cancelled, stats.recycled.interrupted), (1, 1));
}

#[test]
fn a_panic_replaces_the_member() {
    let pool = pool(1);
    pool.exec(|lua| lua.globals().set("x", 1)).unwrap();
    let err = pool.exec::<(), _>(|_| panic!("boom")).unwrap_err();
    assert!(err.is_panic());
    assert!(pool.eval::<bool>("x == nil").unwrap());
    assert_eq!(pool.stats().recycled.panicked, 1);
}

#[test]
fn on_return_resets_and_a_failing_one_replaces() {
    let pool = IslePool::builder()
        .size(1)
        .on_return(|lua| {
            if lua.globals().get::<bool>("poison")? {
                Err(mlua_isle::mlua::Error::runtime("cannot reset"))
            } else {
                lua.globals().set("session", mlua_isle::mlua::Nil)
            }
        })
        .spawn(|lua| lua.globals().set("poison", false))
        .unwrap();
    let guard = pool.checkout().unwrap();
    guard.exec(|lua| lua.globals().set("session", 1)).unwrap();
    drop(guard);
    assert!(pool.eval::<bool>("session == nil").unwrap());
    let guard = pool.checkout().unwrap();
    guard.exec(|lua| lua.globals().set("poison", true)).unwrap();
    drop(guard);
    // The replacement ran `init` again.
    assert!(!pool.eval::<bool>("poison").unwrap());
    assert_eq!(pool.stats().recycled.on_return, 1);
}

#[test]
fn a_hard_stopped_member_is_replaced() {
    let pool = IslePool::builder()
        .isle(IsleBuilder::new().grace_period(Duration::from_millis(50)))
        .size(1)
        .spawn(|_| Ok(()))
        .unwrap();
    // Rust code that ignores its token: no interrupt reaches it; the isle gives up.
    let (release_tx, release) = mpsc::channel::<()>();
    let err = pool
        .request()
        .timeout(Duration::from_millis(20))
        .exec(move |_| {
            let _ = release.recv_timeout(HANG_GUARD);
            Ok(())
        })
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(pool.eval::<i64>("7").unwrap(), 7);
    let stats = pool.stats();
    assert_eq!((stats.replaced, stats.abandoned), (1, 1));
    drop(release_tx);
}

#[test]
fn broadcast_reaches_every_member() {
    let pool = pool(2);
    let results = pool.broadcast_exec(|lua| lua.globals().set("v", 2));
    assert_eq!(results.len(), 2);
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            pool.spawn_exec(move |lua| {
                barrier.wait();
                lua.globals().get::<i64>("v")
            })
            .unwrap()
        })
        .collect();
    for task in tasks {
        assert_eq!(task.wait().unwrap(), 2);
    }
}

#[test]
fn shutdown_runs_what_is_queued_and_refuses_more() {
    let pool = pool(2);
    let tasks: Vec<_> = (0..50)
        .map(|i| pool.spawn_eval::<i64>(format!("{i}").as_str()).unwrap())
        .collect();
    pool.shutdown().unwrap();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.wait().unwrap(), i as i64);
    }
}

#[test]
fn a_blocking_call_on_a_member_thread_is_reentrant() {
    let pool = Arc::new(pool(1));
    let inner = pool.clone();
    let err = pool
        .exec(move |_| Ok(inner.eval::<i64>("1")))
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, IsleError::Reentrant));
}

#[test]
fn a_spare_takes_over_without_a_start_on_the_request_path() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let inits = Arc::new(AtomicUsize::new(0));
    let (release_tx, release) = mpsc::channel::<()>();
    let release = Mutex::new(release);
    let counted = inits.clone();
    let pool = IslePool::builder()
        .size(1)
        .spares(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn(move |lua| {
            // The first two VMs (member and spare) start at once; later ones wait.
            if counted.fetch_add(1, Ordering::SeqCst) >= 2 {
                release.lock().unwrap().recv().unwrap();
            }
            lua.globals().set("fresh", true)
        })
        .unwrap();
    assert_eq!(pool.stats().spares, 1);
    pool.exec(|lua| lua.globals().set("fresh", false)).unwrap();
    // The member is recycled; the spare serves the next request while the new spare's
    // `init` is still held.
    let next = pool.spawn_eval::<bool>("fresh").unwrap();
    assert!(next.wait_timeout(HANG_GUARD).unwrap().unwrap());
    assert!(inits.load(Ordering::SeqCst) >= 2);
    for _ in 0..4 {
        let _ = release_tx.send(());
    }
    drop(release_tx);
}
