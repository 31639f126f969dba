use mlua_isle::{IsleBuilder, IsleError, IslePool, Recycle};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// F1: shutdown discards queued work when the only member was retired by the policy.
#[test]
fn f1_shutdown_runs_what_is_queued_with_recycling() {
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn(|_| Ok(()))
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            pool.spawn_exec(move |_| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(i)
            })
            .unwrap()
        })
        .collect();
    pool.shutdown().unwrap();
    let r: Vec<_> = tasks.into_iter().map(|t| t.wait()).collect();
    println!("f1 {r:?}");
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
}

// F2: shutdown_timeout does not return when the supervisor is stuck queueing a return.
#[test]
fn f2_shutdown_timeout_is_bounded_with_a_stuck_return() {
    let pool = IslePool::builder()
        .size(2)
        .isle(IsleBuilder::new().queue_capacity(1))
        .spawn(|_| Ok(()))
        .unwrap();
    let guard = pool.checkout().unwrap();
    guard
        .spawn_eval::<()>("while true do end")
        .unwrap()
        .detach();
    std::thread::sleep(Duration::from_millis(50));
    guard.spawn_eval::<()>("return").unwrap().detach(); // fills the member's queue
    drop(guard); // Full -> Event::Return -> supervisor blocks in a waiting send
    std::thread::sleep(Duration::from_millis(50));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = pool.shutdown_timeout(Duration::from_millis(100));
        tx.send((r, t.elapsed())).unwrap();
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    println!("f2 {got:?}");
    assert!(
        got.is_ok(),
        "shutdown_timeout(100ms) still blocked after 5s"
    );
}

// F3: the member is still BUSY after the caller has its result.
#[test]
fn f3_try_checkout_after_a_request_on_an_idle_pool() {
    let pool = IslePool::builder().size(1).spawn(|_| Ok(())).unwrap();
    let mut full = 0;
    let mut busy = 0;
    for _ in 0..2000 {
        pool.eval::<i64>("1").unwrap();
        if pool.stats().busy != 0 {
            busy += 1;
        }
        pool.eval::<i64>("1").unwrap();
        match pool.try_checkout() {
            Ok(g) => drop(g),
            Err(IsleError::Full) => full += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    println!("f3 full={full} busy_in_stats={busy}");
    assert_eq!(full, 0);
}

// F4: dropping the pool fails queued requests instead of letting members run them.
#[test]
fn f4_drop_runs_what_is_queued() {
    let pool = IslePool::builder().size(1).spawn(|_| Ok(())).unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            pool.spawn_exec(move |_| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(i)
            })
            .unwrap()
        })
        .collect();
    drop(pool);
    let r: Vec<_> = tasks.into_iter().map(|t| t.wait()).collect();
    println!("f4 {r:?}");
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
}

// F5: a replacement whose init hangs makes shutdown_timeout hang.
#[test]
fn f5_shutdown_timeout_with_a_slow_replacement_init() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    let pool = IslePool::builder()
        .size(1)
        .recycle(Recycle::new().after_requests(1))
        .spawn(move |_| {
            if n.fetch_add(1, Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_secs(8));
            }
            Ok(())
        })
        .unwrap();
    pool.eval::<i64>("1").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = pool.shutdown_timeout(Duration::from_millis(100));
        tx.send((r, t.elapsed())).unwrap();
    });
    let got = rx.recv_timeout(Duration::from_secs(4));
    println!("f5 {got:?}");
    assert!(
        got.is_ok(),
        "shutdown_timeout(100ms) still blocked after 4s"
    );
}

// F6: default policy retires after a cancel; what is queued behind is lost at shutdown.
#[test]
fn f6_cancel_then_shutdown() {
    let pool = IslePool::builder().size(1).spawn(|_| Ok(())).unwrap();
    let t = pool.spawn_eval::<()>("while true do end").unwrap();
    let rest: Vec<_> = (0..3)
        .map(|i| pool.spawn_exec(move |_| Ok(i)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    t.cancel();
    pool.shutdown().unwrap();
    let r: Vec<_> = rest.into_iter().map(|t| t.wait()).collect();
    println!("f6 {r:?}");
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
}
