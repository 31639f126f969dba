//! `spawn_with`: an `init` that returns a value to whoever starts the isle, on the blocking and
//! the async isle; the value is delivered once the isle has started, and dropped when it does
//! not start.

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mlua_isle::{Isle, IsleError};

#[test]
fn init_returns_a_value_made_on_the_lua_thread() {
    let (isle, (count, thread)) = Isle::spawn_with(|lua| {
        lua.load("function a() end function b() end function c() end")
            .exec()?;
        let count = lua
            .load("local n = 0 for _, k in ipairs({'a', 'b', 'c'}) do if _G[k] then n = n + 1 end end return n")
            .eval::<i64>()?;
        Ok((count, std::thread::current().id()))
    })
    .unwrap();
    assert_eq!(count, 3);
    assert_ne!(thread, std::thread::current().id());
    // The isle is the one `init` prepared.
    assert_eq!(isle.call::<()>("c", ()).ok(), Some(()));
    isle.shutdown().unwrap();
}

#[test]
fn init_returns_the_end_of_a_channel_a_host_function_feeds() {
    let (isle, events) = Isle::builder()
        .thread_name("events")
        .queue_capacity(8)
        .spawn_with(|lua| {
            let (tx, rx) = mpsc::channel::<String>();
            let emit = lua.create_function(move |_, event: String| Ok(tx.send(event).is_ok()))?;
            lua.globals().set("emit", emit)?;
            Ok(rx)
        })
        .unwrap();
    assert!(isle.eval::<bool>("emit('one') return emit('two')").unwrap());
    assert_eq!(events.recv_timeout(HANG).unwrap(), "one");
    assert_eq!(events.recv_timeout(HANG).unwrap(), "two");
    // The channel closes with the VM.
    isle.shutdown().unwrap();
    assert_eq!(
        events.recv_timeout(HANG),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
}

#[test]
fn a_failing_init_is_an_init_error() {
    let err = Isle::spawn_with(|lua| lua.load("error('bad init', 0)").eval::<i64>()).unwrap_err();
    match err {
        IsleError::Init(inner) => assert_eq!(inner.as_lua().unwrap().message(), "bad init"),
        other => panic!("{other:?}"),
    }
    quiet_lua_thread_panics();
    let err = Isle::builder()
        .spawn_with(|_| -> mlua_isle::mlua::Result<i64> { panic!("init panicked") })
        .unwrap_err();
    match err {
        IsleError::Init(inner) => {
            assert!(matches!(*inner, IsleError::Panic(ref m) if m == "init panicked"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_value_of_an_isle_that_does_not_start_is_dropped() {
    let live = Arc::new(AtomicUsize::new(0));
    let counted = live.clone();
    // `init` succeeds, but only after the isle's default deadline: the isle does not start.
    let err = Isle::builder()
        .timeout(Duration::from_millis(5))
        .spawn_with(move |_| {
            let value = DropCounter::new(&counted);
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
            Ok(value)
        })
        .unwrap_err();
    assert!(
        matches!(err, IsleError::Init(ref inner) if inner.is_timeout()),
        "{err:?}"
    );
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // A started isle hands it over: it lives as long as the caller keeps it.
    let counted = live.clone();
    let (isle, value) = Isle::spawn_with(move |_| Ok(DropCounter::new(&counted))).unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(isle);
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(value);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[cfg(feature = "tokio")]
mod async_isle {
    use super::*;

    use std::future::Future;

    use mlua_isle::AsyncIsle;
    use tokio::sync::{mpsc as tokio_mpsc, oneshot};

    /// Fails the scenario if it does not finish within [`HANG`].
    async fn guarded(scenario: impl Future<Output = ()>) {
        tokio::time::timeout(HANG, scenario)
            .await
            .expect("hang guard: still running");
    }

    /// `scenario::current_thread` and `scenario::multi_thread` tests for each `async fn`.
    macro_rules! both_flavours {
        ($($scenario:ident),* $(,)?) => {$(
            mod $scenario {
                #[tokio::test]
                async fn current_thread() {
                    super::guarded(super::$scenario()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn multi_thread() {
                    super::guarded(super::$scenario()).await
                }
            }
        )*};
    }

    both_flavours!(
        init_returns_a_receiver_the_isle_feeds,
        the_builder_hands_the_value_over_with_the_driver,
        a_failing_init_is_an_init_error_and_its_value_is_dropped,
        a_start_given_up_on_drops_the_value,
    );

    async fn init_returns_a_receiver_the_isle_feeds() {
        let (isle, driver, mut events) = AsyncIsle::spawn_with(|lua| {
            let (tx, rx) = tokio_mpsc::unbounded_channel::<i64>();
            let emit = lua.create_function(move |_, n: i64| Ok(tx.send(n).is_ok()))?;
            lua.globals().set("emit", emit)?;
            Ok(rx)
        })
        .await
        .unwrap();
        assert!(isle.eval::<bool>("emit(1) return emit(2)").await.unwrap());
        assert_eq!(events.recv().await, Some(1));
        assert_eq!(events.recv().await, Some(2));
        driver.shutdown().await.unwrap();
        assert_eq!(events.recv().await, None);
    }

    async fn the_builder_hands_the_value_over_with_the_driver() {
        let (isle, driver, loaded) = AsyncIsle::builder()
            .queue_capacity(4)
            .spawn_async_with(|lua| {
                lua.load("rules = { 'a', 'b', 'c' }").exec()?;
                lua.load("#rules").eval::<i64>()
            })
            .await
            .unwrap();
        assert_eq!(loaded, 3);
        assert_eq!(isle.eval::<String>("rules[3]").await.unwrap(), "c");
        // `spawn_async` is the same with no value.
        let (plain, plain_driver) = AsyncIsle::builder()
            .spawn_async(|lua| lua.globals().set("x", 1))
            .await
            .unwrap();
        assert_eq!(plain.eval::<i64>("x").await.unwrap(), 1);
        driver.shutdown().await.unwrap();
        plain_driver.shutdown().await.unwrap();
    }

    async fn a_failing_init_is_an_init_error_and_its_value_is_dropped() {
        let err = AsyncIsle::spawn_with(|lua| lua.load("error('bad init', 0)").eval::<i64>())
            .await
            .unwrap_err();
        assert!(matches!(err, IsleError::Init(_)), "{err:?}");

        let live = Arc::new(AtomicUsize::new(0));
        let counted = live.clone();
        let err = AsyncIsle::builder()
            .timeout(Duration::from_millis(5))
            .spawn_async_with(move |_| {
                let value = DropCounter::new(&counted);
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(20) {
                    std::hint::spin_loop();
                }
                Ok(value)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, IsleError::Init(ref inner) if inner.is_timeout()),
            "{err:?}"
        );
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    async fn a_start_given_up_on_drops_the_value() {
        let (started_tx, mut started) = tokio_mpsc::unbounded_channel::<()>();
        let (gate_tx, gate) = mpsc::channel::<()>();
        let (value, dropped) = oneshot::channel::<()>();
        let mut spawning = Box::pin(AsyncIsle::spawn_with(move |_| {
            let _ = started_tx.send(());
            let _ = gate.recv();
            Ok(value)
        }));
        tokio::select! {
            outcome = &mut spawning => panic!("{outcome:?}"),
            _ = started.recv() => {}
        }
        // Given up on while `init` runs: once it returns, its value is dropped (and the isle,
        // with no handle left, ends).
        drop(spawning);
        gate_tx.send(()).unwrap();
        assert!(dropped.await.is_err());
    }
}
