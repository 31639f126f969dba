//! Panic isolation: a panic ends its request, the isle carries on.

mod common;

use common::*;
use mlua_isle::{Isle, IsleError};

fn isle_with_panicking_host_function() -> Isle {
    quiet_lua_thread_panics();
    Isle::spawn(|lua| {
        let boom = lua
            .create_function(|_, msg: String| -> mlua_isle::mlua::Result<()> { panic!("{msg}") })?;
        lua.globals().set("boom", boom)?;
        lua.globals().set("kept", 1)
    })
    .unwrap()
}

fn assert_panic(result: Result<(), IsleError>, expected: &str) {
    match result {
        Err(IsleError::Panic(msg)) => assert_eq!(msg, expected),
        other => panic!("expected Panic({expected:?}), got {other:?}"),
    }
}

#[test]
fn panic_in_exec_closure_ends_only_that_request() {
    quiet_lua_thread_panics();
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    assert_panic(
        isle.exec(|_| -> mlua_isle::mlua::Result<()> { panic!("exec boom") }),
        "exec boom",
    );
    assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
}

#[test]
fn panic_with_formatted_message_is_kept() {
    quiet_lua_thread_panics();
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let n = 7;
    assert_panic(
        isle.exec(move |_| -> mlua_isle::mlua::Result<()> { panic!("bad {n}") }),
        "bad 7",
    );
}

#[test]
fn panic_in_host_function_ends_the_request() {
    let isle = isle_with_panicking_host_function();
    assert_panic(isle.eval::<()>("boom('host boom')"), "host boom");
    assert_panic(isle.call::<()>("boom", "via call"), "via call");
    assert_eq!(isle.eval::<i64>("kept").unwrap(), 1);
}

#[test]
fn lua_pcall_cannot_swallow_a_host_panic() {
    let isle = isle_with_panicking_host_function();
    assert_panic(
        isle.eval::<()>("local ok = pcall(boom, 'caught?') return ok"),
        "caught?",
    );
    assert_panic(
        isle.eval::<()>("xpcall(function() boom('xcaught?') end, function(e) return e end)"),
        "xcaught?",
    );
    assert_panic(
        isle.eval::<()>("coroutine.wrap(function() pcall(boom, 'in coroutine') end)()"),
        "in coroutine",
    );
    assert_eq!(isle.eval::<i64>("kept").unwrap(), 1);
}

#[test]
fn panic_in_result_conversion_is_isolated() {
    struct Picky;
    impl mlua_isle::mlua::FromLua for Picky {
        fn from_lua(
            _: mlua_isle::mlua::Value,
            _: &mlua_isle::mlua::Lua,
        ) -> mlua_isle::mlua::Result<Self> {
            panic!("conversion boom")
        }
    }
    quiet_lua_thread_panics();
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    match isle.eval::<Picky>("return 1") {
        Err(IsleError::Panic(msg)) => assert_eq!(msg, "conversion boom"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(isle.eval::<i64>("3").unwrap(), 3);
}

#[test]
fn panic_in_init_is_an_init_error() {
    quiet_lua_thread_panics();
    let err = Isle::spawn(|_| panic!("init boom")).unwrap_err();
    match err {
        IsleError::Init(inner) => {
            assert!(matches!(*inner, IsleError::Panic(ref m) if m == "init boom"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn many_panics_in_a_row_leave_the_isle_usable() {
    within_hang_guard(|| {
        let isle = isle_with_panicking_host_function();
        for i in 0..200 {
            assert_panic(isle.eval::<()>(format!("boom('p{i}')")), &format!("p{i}"));
        }
        assert_eq!(isle.eval::<i64>("kept").unwrap(), 1);
    });
}

/// App data whose `Drop` panics: dropped as the VM closes, after `lua_close`, so the panic
/// leaves the Lua thread's own code rather than a request.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("closing boom");
    }
}

#[test]
fn a_panic_while_the_vm_closes_is_reported_by_shutdown() {
    quiet_lua_thread_panics();
    within_hang_guard(|| {
        let isle = Isle::spawn(panics_when_closed).unwrap();
        assert_eq!(isle.eval::<i64>("return 1").unwrap(), 1);
        assert_panic(isle.shutdown(), "closing boom");
    });
}

#[test]
fn a_panic_while_the_vm_closes_is_reported_by_shutdown_timeout() {
    quiet_lua_thread_panics();
    within_hang_guard(|| {
        let isle = Isle::spawn(panics_when_closed).unwrap();
        assert_panic(
            isle.shutdown_timeout(std::time::Duration::from_secs(20)),
            "closing boom",
        );
    });
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn a_panic_while_the_vm_closes_is_reported_by_the_async_shutdown() {
    quiet_lua_thread_panics();
    let (isle, driver) = mlua_isle::AsyncIsle::spawn(panics_when_closed)
        .await
        .unwrap();
    drop(isle);
    let shutdown = tokio::time::timeout(std::time::Duration::from_secs(20), driver.shutdown());
    assert_panic(shutdown.await.expect("hang guard"), "closing boom");
}

/// Each member's VM panics as it closes.
fn panics_when_closed(lua: &mlua_isle::mlua::Lua) -> mlua_isle::mlua::Result<()> {
    lua.set_app_data(PanicsWhenDropped);
    Ok(())
}

#[test]
fn a_pool_shutdown_reports_a_panic_while_a_member_closes() {
    quiet_lua_thread_panics();
    within_hang_guard(|| {
        let pool = mlua_isle::IslePool::builder()
            .size(2)
            .spawn(panics_when_closed)
            .unwrap();
        assert_eq!(pool.eval::<i64>("return 1").unwrap(), 1);
        assert_panic(pool.shutdown(), "closing boom");
    });
}

#[test]
fn a_pool_shutdown_reports_a_panic_while_a_checked_out_member_closes() {
    quiet_lua_thread_panics();
    within_hang_guard(|| {
        let pool = mlua_isle::IslePool::builder()
            .size(1)
            .spawn(panics_when_closed)
            .unwrap();
        let guard = pool.checkout().unwrap();
        assert_eq!(guard.eval::<i64>("return 1").unwrap(), 1);
        let shutdown = std::thread::spawn(move || pool.shutdown());
        drop(guard);
        assert_panic(shutdown.join().unwrap(), "closing boom");
    });
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn an_async_pool_shutdown_reports_a_panic_while_a_member_closes() {
    quiet_lua_thread_panics();
    let (pool, driver) = mlua_isle::AsyncIslePool::builder()
        .size(2)
        .spawn_async(panics_when_closed)
        .await
        .unwrap();
    assert_eq!(pool.eval::<i64>("return 1").await.unwrap(), 1);
    drop(pool);
    let shutdown = tokio::time::timeout(std::time::Duration::from_secs(20), driver.shutdown());
    assert_panic(shutdown.await.expect("hang guard"), "closing boom");
}
