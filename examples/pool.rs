//! A pool of isles: requests spread over the members, a checked-out session, recycling.
//!
//! Run with: `cargo run --example pool`

use std::time::Duration;

use mlua_isle::{IsleBuilder, IsleError, IslePool, Recycle};

fn main() -> Result<(), IsleError> {
    let pool = IslePool::builder()
        .isle(
            IsleBuilder::new()
                .memory_limit(64 << 20)
                .timeout(Duration::from_secs(1)),
        )
        .size(2)
        .thread_name("demo")
        .recycle(Recycle::new().after_requests(10_000))
        .spawn(|lua| lua.load("function double(x) return 2 * x end").exec())?;

    // Requests go to whichever member is free first.
    let tasks: Vec<_> = (0..4)
        .map(|i| pool.spawn_call::<i64>("double", i))
        .collect::<Result<_, _>>()?;
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.wait()?, 2 * i as i64);
    }

    // A session: one member, exclusively, as long as the guard lives.
    let session = pool.checkout()?;
    let worker = std::thread::spawn(move || -> Result<String, IsleError> {
        session.exec(|lua| lua.globals().set("user", "alice"))?;
        session.eval::<String>("'hello ' .. user")
    });
    println!("{}", worker.join().expect("the session thread panicked")?);

    // A runaway request times out; its member is replaced by a fresh VM in the background.
    let err = pool.eval::<()>("while true do end").unwrap_err();
    println!("runaway request: {err}");
    println!("{:?}", pool.stats());

    pool.shutdown()
}
