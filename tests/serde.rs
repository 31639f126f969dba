//! `Serde<T>` through every kind of request, its depth limit, and the table of a table error.

#![cfg(feature = "serde")]

mod common;

use common::within_hang_guard;
use mlua_isle::{Isle, IsleError, IslePool, LuaError, LuaErrorKind, Serde};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Order {
    id: u64,
    items: Vec<String>,
    note: Option<String>,
}

fn order() -> Order {
    Order {
        id: 7,
        items: vec!["tea".into(), "cake".into()],
        note: None,
    }
}

const SCRIPT: &str = r#"
    function echo(o) return o end
    function describe(o) return o.id, #o.items, o.note == nil end
    function fail(code) error({ code = code, message = "failed with " .. code }) end
"#;

fn isle() -> Isle {
    Isle::spawn(|lua| lua.load(SCRIPT).exec()).unwrap()
}

/// The kind and the error of a failed request that must be a Lua error.
fn lua_error<T: std::fmt::Debug>(result: Result<T, IsleError>) -> LuaError {
    match result {
        Err(IsleError::Lua(e)) => e,
        other => panic!("expected a Lua error, got {other:?}"),
    }
}

const DEEP_RESULT: &str = "local t = {} for i = 1, 1e5 do t = {t} end return t";
const CYCLIC_RESULT: &str = "local t = {} t.self = t return t";

/// A value that serializes as `depth` nested one-element arrays around `1`, without holding
/// them (its serialization recurses as any nested value's does).
#[derive(Clone, Copy)]
struct Nested(usize);

impl Serialize for Nested {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.0 {
            0 => serializer.serialize_u8(1),
            depth => {
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element(&Nested(depth - 1))?;
                seq.end()
            }
        }
    }
}

#[test]
fn typed_values_round_trip_through_eval_and_call() {
    let isle = isle();
    let Serde(back) = isle.call::<Serde<Order>>("echo", Serde(order())).unwrap();
    assert_eq!(back, order());
    let (id, count, no_note) = isle
        .call::<(u64, usize, bool)>("describe", Serde(order()))
        .unwrap();
    assert_eq!((id, count, no_note), (7, 2, true));
    let Serde(value) = isle
        .eval::<Serde<serde_json::Value>>("{ a = { 1, 2 }, b = 'x' }")
        .unwrap();
    assert_eq!(value, json!({ "a": [1, 2], "b": "x" }));
    let task = isle
        .spawn_call::<Serde<Order>>("echo", Serde(order()))
        .unwrap();
    assert_eq!(task.wait().unwrap().0, order());
    let task = isle.spawn_eval::<Serde<Vec<i64>>>("{ 3, 2, 1 }").unwrap();
    assert_eq!(task.wait().unwrap().0, [3, 2, 1]);
}

#[test]
fn only_the_first_result_is_taken_and_nothing_reads_as_nil() {
    let isle = isle();
    let Serde(first) = isle.eval::<Serde<i64>>("return 1, 2").unwrap();
    assert_eq!(first, 1);
    let Serde(none) = isle.eval::<Serde<Option<Order>>>("return").unwrap();
    assert_eq!(none, None);
    let Serde(()) = isle.eval::<Serde<()>>("nil").unwrap();
}

#[test]
fn sequences_keep_their_kind_and_empty_tables_read_as_the_target_wants() {
    let isle = isle();
    let Serde(empty) = isle
        .call::<Serde<serde_json::Value>>("echo", Serde(Vec::<i64>::new()))
        .unwrap();
    assert_eq!(empty, json!([]));
    let Serde(as_map) = isle.eval::<Serde<serde_json::Value>>("{}").unwrap();
    assert_eq!(as_map, json!({}));
    let Serde(as_vec) = isle.eval::<Serde<Vec<i64>>>("{}").unwrap();
    assert!(as_vec.is_empty());
}

#[test]
fn a_value_of_the_wrong_shape_is_a_conversion_error_and_the_isle_serves_on() {
    let isle = isle();
    let err = lua_error(isle.eval::<Serde<Order>>("{ id = 'seven' }"));
    assert_eq!(err.kind(), LuaErrorKind::Conversion);
    let err = lua_error(isle.eval::<Serde<serde_json::Value>>("{ f = print }"));
    assert_eq!(err.kind(), LuaErrorKind::Conversion);
    assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
}

#[test]
fn a_result_nested_a_hundred_thousand_levels_is_a_conversion_error() {
    within_hang_guard(|| {
        let isle = isle();
        let err = lua_error(isle.eval::<Serde<serde_json::Value>>(DEEP_RESULT));
        assert_eq!(err.kind(), LuaErrorKind::Conversion, "{err}");
        assert!(err.message().contains("recursion limit"), "{err}");
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn a_table_containing_itself_is_a_conversion_error() {
    within_hang_guard(|| {
        let isle = isle();
        let err = lua_error(isle.eval::<Serde<serde_json::Value>>(CYCLIC_RESULT));
        assert_eq!(err.kind(), LuaErrorKind::Conversion, "{err}");
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn an_argument_nested_too_deeply_is_a_conversion_error() {
    within_hang_guard(|| {
        let isle = isle();
        let err = lua_error(isle.call::<()>("echo", Serde(Nested(100_000))));
        assert_eq!(err.kind(), LuaErrorKind::Conversion, "{err}");
        assert!(err.message().contains("recursion limit"), "{err}");
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn the_depth_limit_is_configurable() {
    let isle = Isle::builder()
        .serde_depth(200)
        .spawn(|lua| lua.load(SCRIPT).exec())
        .unwrap();
    let Serde(value) = isle
        .call::<Serde<serde_json::Value>>("echo", Serde(Nested(150)))
        .unwrap();
    assert!(value.is_array());
    let isle = Isle::builder().serde_depth(1).spawn(|_| Ok(())).unwrap();
    assert!(isle.eval::<Serde<Vec<i64>>>("{ 1 }").is_ok());
    let err = lua_error(isle.eval::<Serde<Vec<Vec<i64>>>>("{ { 1 } }"));
    assert_eq!(err.kind(), LuaErrorKind::Conversion);
}

#[test]
fn function_handles_take_and_give_typed_values() {
    let isle = isle();
    let echo = isle.function("echo").unwrap();
    let Serde(back) = isle
        .call_function::<Serde<Order>>(&echo, Serde(order()))
        .unwrap();
    assert_eq!(back, order());
    let fail = isle.function("fail").unwrap();
    let err = lua_error(isle.call_function::<()>(&fail, 3));
    assert_eq!(
        err.value(),
        Some(&json!({ "code": 3, "message": "failed with 3" }))
    );
}

#[test]
fn pools_take_and_give_typed_values() {
    let pool = IslePool::builder()
        .size(2)
        .spawn(|lua| lua.load(SCRIPT).exec())
        .unwrap();
    let Serde(back) = pool.call::<Serde<Order>>("echo", Serde(order())).unwrap();
    assert_eq!(back, order());
    let session = pool.checkout().unwrap();
    let Serde(list) = session.eval::<Serde<Vec<String>>>("{ 'x' }").unwrap();
    assert_eq!(list, ["x"]);
    let err = lua_error(pool.call::<()>("fail", 5));
    assert_eq!(
        err.value_as::<serde_json::Value>().unwrap().unwrap()["code"],
        5
    );
}

#[derive(Deserialize, Debug, PartialEq)]
struct Failure {
    code: i64,
}

#[test]
fn a_table_error_carries_its_value_and_message() {
    let isle = isle();
    let err = lua_error(isle.call::<()>("fail", 42));
    assert_eq!(err.kind(), LuaErrorKind::Runtime);
    assert_eq!(err.message(), "failed with 42");
    assert!(err.traceback().unwrap().contains("stack traceback"));
    let failure: Failure = err.value_as().unwrap().unwrap();
    assert_eq!(failure, Failure { code: 42 });
    assert!(err.value_as::<Vec<String>>().unwrap().is_err());

    let err = lua_error(isle.eval::<()>("error({ msg = 'short' })"));
    assert_eq!(err.message(), "short");
    let err = lua_error(isle.eval::<()>("error({ 1, 2 })"));
    assert!(err.message().starts_with("table: "), "{}", err.message());
    assert_eq!(err.value(), Some(&json!([1, 2])));
}

#[test]
fn a_table_error_with_tostring_keeps_what_tostring_says() {
    let isle = isle();
    let err = lua_error(isle.eval::<()>(
        "error(setmetatable({ code = 1, message = 'field' }, { __tostring = function(t) return 'shown ' .. t.code end }))",
    ));
    assert_eq!(err.message(), "shown 1");
    assert_eq!(err.value(), Some(&json!({ "code": 1, "message": "field" })));
}

#[test]
fn errors_that_are_not_tables_have_no_value() {
    let isle = isle();
    for code in [
        "error('text')",
        "error(42)",
        "error()",
        "local x = nil + 1",
        "return 1 +",
    ] {
        let err = lua_error(isle.eval::<()>(code));
        assert_eq!(err.value(), None, "{code}");
    }
    // A host function's error and a panic are reported as before.
    let isle = Isle::spawn(|lua| {
        let fails =
            lua.create_function(|_, ()| -> mlua::Result<()> { Err(mlua::Error::runtime("host")) })?;
        lua.globals().set("fails", fails)
    })
    .unwrap();
    let err = lua_error(isle.eval::<()>("fails()"));
    assert!(err.message().contains("host"), "{}", err.message());
    assert_eq!(err.value(), None);
}

#[test]
fn a_table_rethrown_through_pcall_and_coroutines_keeps_its_value() {
    let isle = isle();
    let rethrown = r#"
        local ok, e = pcall(error, { code = 1 })
        e.code = e.code + 1
        local ok2, e2 = pcall(function() error(e) end)
        local co = coroutine.wrap(function() error(e2) end)
        local ok3, e3 = pcall(co)
        e3.code = e3.code + 1
        error(e3)
    "#;
    let err = lua_error(isle.eval::<()>(rethrown));
    assert_eq!(err.value(), Some(&json!({ "code": 3 })));
    // A table caught for good does not leak into the next failure.
    isle.eval::<()>("pcall(error, { caught = true })").unwrap();
    let err = lua_error(isle.eval::<()>("error('plain')"));
    assert_eq!(err.value(), None);
}

#[test]
fn a_deep_or_cyclic_error_table_has_no_value_and_the_isle_serves_on() {
    within_hang_guard(|| {
        let isle = isle();
        let deep = "local t = {} for i = 1, 1e5 do t = {t} end error(t)";
        let err = lua_error(isle.eval::<()>(deep));
        assert_eq!(err.value(), None);
        let err = lua_error(isle.eval::<()>("local t = { message = 'loop' } t.self = t error(t)"));
        assert_eq!(err.message(), "loop");
        assert_eq!(err.value(), Some(&json!({ "message": "loop" })));
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn a_cancel_still_wins_over_a_table_error() {
    let isle = isle();
    let task = isle
        .spawn_eval::<()>("while true do pcall(error, { code = 1 }) end")
        .unwrap();
    task.cancel();
    assert!(task.wait().unwrap_err().is_cancelled());
    let err = lua_error(isle.call::<()>("fail", 1));
    assert_eq!(err.value().unwrap()["code"], 1);
}

#[cfg(feature = "tokio")]
mod async_requests {
    use super::*;
    use mlua_isle::{AsyncIsle, AsyncIslePool};

    #[tokio::test]
    async fn async_isles_take_and_give_typed_values() {
        let (isle, driver) = AsyncIsle::spawn(|lua| lua.load(SCRIPT).exec())
            .await
            .unwrap();
        let Serde(back) = isle
            .call::<Serde<Order>>("echo", Serde(order()))
            .await
            .unwrap();
        assert_eq!(back, order());
        let Serde(v) = isle.eval::<Serde<Vec<i64>>>("{ 1 }").await.unwrap();
        assert_eq!(v, [1]);
        let Serde(back) = isle
            .coroutine_call::<Serde<Order>>("echo", Serde(order()))
            .await
            .unwrap();
        assert_eq!(back, order());
        let Serde(v) = isle
            .coroutine_eval::<Serde<serde_json::Value>>("coroutine.yield() return { k = true }")
            .await
            .unwrap();
        assert_eq!(v, json!({ "k": true }));
        let echo = isle.function("echo").await.unwrap();
        let Serde(back) = isle
            .coroutine_call_function::<Serde<Order>>(&echo, Serde(order()))
            .await
            .unwrap();
        assert_eq!(back, order());
        let err = lua_error(isle.eval::<Serde<serde_json::Value>>(DEEP_RESULT).await);
        assert_eq!(err.kind(), LuaErrorKind::Conversion);
        let err = lua_error(
            isle.coroutine_eval::<Serde<serde_json::Value>>(CYCLIC_RESULT)
                .await,
        );
        assert_eq!(err.kind(), LuaErrorKind::Conversion);
        let err = lua_error(isle.call::<()>("fail", 9).await);
        assert_eq!(err.value().unwrap()["code"], 9);
        driver.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_pools_take_and_give_typed_values() {
        let (pool, driver) = AsyncIslePool::spawn(|lua| lua.load(SCRIPT).exec())
            .await
            .unwrap();
        let Serde(back) = pool
            .call::<Serde<Order>>("echo", Serde(order()))
            .await
            .unwrap();
        assert_eq!(back, order());
        let err = lua_error(pool.eval::<()>("error({ code = 4 })").await);
        assert_eq!(err.value(), Some(&json!({ "code": 4 })));
        driver.shutdown().await.unwrap();
    }

    /// On Lua 5.4 and 5.5 a coroutine request has a protected base frame that sees the table.
    #[cfg(any(feature = "lua54", feature = "lua55"))]
    #[tokio::test]
    async fn a_coroutine_request_keeps_its_table_error() {
        let (isle, driver) = AsyncIsle::spawn(|lua| lua.load(SCRIPT).exec())
            .await
            .unwrap();
        let err = lua_error(isle.coroutine_call::<()>("fail", 8).await);
        assert_eq!(err.message(), "failed with 8");
        assert_eq!(err.value().unwrap()["code"], 8);
        let err = lua_error(
            isle.coroutine_eval::<()>(
                "coroutine.yield() local ok, e = pcall(error, { n = 1 }) error(e)",
            )
            .await,
        );
        assert_eq!(err.value(), Some(&json!({ "n": 1 })));
        let err = lua_error(
            isle.coroutine_eval::<()>("coroutine.yield() error('text')")
                .await,
        );
        assert_eq!(err.value(), None);
        driver.shutdown().await.unwrap();
    }
}

/// A table that holds the level below twice, `levels` deep: a few kilobytes in Lua, 2^levels
/// values converted naively.
fn shared_chain(levels: u32) -> String {
    format!("local t = {{}} for i = 1, {levels} do t = {{ t, t }} end")
}

#[test]
fn a_result_that_would_expand_past_the_budget_is_a_conversion_error() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .memory_limit(16 << 20)
            .spawn(|_| Ok(()))
            .unwrap();
        let chain = format!("{} return t", shared_chain(40));
        let err = lua_error(isle.eval::<Serde<serde_json::Value>>(chain.as_str()));
        assert_eq!(err.kind(), LuaErrorKind::Conversion, "{err}");
        // A megabyte referenced a hundred times would be 100 MiB of strings.
        let strings =
            "local s = ('x'):rep(2^20) local t = {} for i = 1, 100 do t[i] = s end return t";
        let err = lua_error(isle.eval::<Serde<Vec<String>>>(strings));
        assert_eq!(err.kind(), LuaErrorKind::Conversion, "{err}");
        // Shared tables within the budget convert as before (once per reference).
        let small = format!("{} return t", shared_chain(3));
        let value = isle
            .eval::<Serde<serde_json::Value>>(small.as_str())
            .unwrap()
            .0;
        // (An empty table reads as an object.)
        assert_eq!(value, json!([[[{}, {}], [{}, {}]], [[{}, {}], [{}, {}]]]));
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn an_error_table_that_would_expand_past_the_budget_has_no_value() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .memory_limit(16 << 20)
            .spawn(|_| Ok(()))
            .unwrap();
        // Converted naively this would never end, and no interrupt could stop it: the request
        // ends with its Lua error (not its generous deadline), without a value.
        let chain = format!("{} t.message = 'bomb' error(t)", shared_chain(40));
        let err = lua_error(
            isle.request()
                .timeout(std::time::Duration::from_secs(20))
                .eval::<()>(chain.as_str()),
        );
        assert_eq!(err.message(), "bomb");
        assert_eq!(err.value(), None);
        let strings =
            "local s = ('x'):rep(2^16) local t = {} for i = 1, 100 do t[i] = s end error(t)";
        assert_eq!(lua_error(isle.eval::<()>(strings)).value(), None);
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn eval_with_keeps_the_table_error() {
    within_hang_guard(|| {
        let isle = isle();
        let err = lua_error(isle.eval_with::<()>("error({ code = ... })", 7));
        assert_eq!(err.value(), Some(&json!({ "code": 7 })));
    });
}

/// A result type whose conversion fails with a plain runtime error, as a host's own `FromLua`
/// may.
#[derive(Debug)]
struct Picky;

impl mlua_isle::mlua::FromLua for Picky {
    fn from_lua(
        _: mlua_isle::mlua::Value,
        _: &mlua_isle::mlua::Lua,
    ) -> mlua_isle::mlua::Result<Self> {
        Err(mlua_isle::mlua::Error::runtime("picky conversion failed"))
    }
}

#[test]
fn a_failure_without_a_table_never_gets_an_earlier_one() {
    within_hang_guard(|| {
        let isle = isle();
        // Caught by the script: noted nowhere.
        isle.eval::<()>("pcall(error, { secret = 1 })").unwrap();
        let err = lua_error(isle.eval::<Picky>("42"));
        assert_eq!(err.value(), None);
        assert!(lua_error(isle.call::<()>("fail", 3)).value().is_some());
        let err = lua_error(isle.eval::<Picky>("42"));
        assert_eq!(err.value(), None);
    });
}

#[cfg(all(feature = "tokio", any(feature = "lua54", feature = "lua55")))]
#[tokio::test]
async fn a_table_noted_by_a_request_that_panicked_does_not_reach_a_later_error() {
    common::quiet_lua_thread_panics();
    let (isle, driver) = mlua_isle::AsyncIsle::spawn(|lua| {
        let boom =
            lua.create_function(|_, ()| -> mlua_isle::mlua::Result<String> { panic!("boom") })?;
        lua.globals().set("boom", boom)
    })
    .await
    .unwrap();
    // The request's base frame notes the table; turning it into text (its `__tostring`)
    // panics, so the request ends with the panic and never takes the table.
    let first = isle
        .coroutine_eval::<()>(
            "error(setmetatable({ secret = 'of the first' }, \
             { __tostring = function() return boom() end }))",
        )
        .await;
    assert!(matches!(first, Err(IsleError::Panic(_))), "{first:?}");
    assert_eq!(isle.eval::<i64>("1 + 1").await.unwrap(), 2);
    let later = lua_error(isle.eval::<Picky>("42").await);
    assert_eq!(later.value(), None);
    let later = lua_error(isle.coroutine_eval::<Picky>("42").await);
    assert_eq!(later.value(), None);
    drop(isle);
    driver.shutdown().await.unwrap();
}

/// On Lua 5.1 creating a C function runs a collection step: neither the requests' message
/// handler (made once) nor reading the error slot after a failure creates one, so a finalizer
/// raising errors never runs outside a protected call. `function` is the global called,
/// succeeding or failing.
#[cfg(any(feature = "lua51", feature = "luajit"))]
fn raising_finalizers_survive_calls_to(function: &'static str) {
    within_hang_guard(move || {
        let isle = Isle::spawn(move |lua| lua.load(function).exec()).unwrap();
        isle.eval::<()>(
            "ARMED = false KEEP = {} \
             local function fin() if ARMED then error('finalizer boom') end end \
             for i = 1, 1000 do local p = newproxy(true) getmetatable(p).__gc = fin KEEP[i] = p end \
             collectgarbage() collectgarbage('setpause', 1) \
             ARMED = true KEEP = nil",
        )
        .unwrap();
        for _ in 0..20_000 {
            let _ = isle.call::<()>("f", "x");
        }
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[cfg(any(feature = "lua51", feature = "luajit"))]
#[test]
fn finalizers_that_raise_do_not_run_outside_a_protected_call() {
    raising_finalizers_survive_calls_to("function f() end");
}

#[cfg(any(feature = "lua51", feature = "luajit"))]
#[test]
fn finalizers_that_raise_do_not_run_outside_a_protected_call_after_a_failure() {
    raising_finalizers_survive_calls_to("function f() error('no') end");
}

/// A VM full to its last bytes: the next call's handler needs no allocation.
#[test]
fn a_call_on_a_vm_full_to_its_limit_fails_cleanly() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .memory_limit(4 << 20)
            .spawn(|lua| lua.load("function f() end").exec())
            .unwrap();
        let fill = r#"
            KEEP = {}
            for i = 1, 20000 do KEEP[i] = false end
            local n = 0
            for _, c in ipairs({ "a", "b", "c", "d" }) do
                collectgarbage()
                local size = 200000
                while size >= 1 and n < 20000 do
                    local ok, s = pcall(string.rep, c, size)
                    if ok then n = n + 1 KEEP[n] = s end
                    size = size - math.max(1, math.floor(size / 64))
                end
            end
            return n
        "#;
        let _ = isle.eval::<i64>(fill);
        for _ in 0..50 {
            let _ = isle.call::<()>("f", ());
        }
        isle.exec(|lua| {
            lua.globals().set("KEEP", mlua_isle::mlua::Value::Nil)?;
            lua.gc_collect()
        })
        .unwrap();
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

/// A table whose only keys are 1, 2, 4, ..., 2^k: k + 1 entries, and (where the length
/// operator's search doubles through them, as on PUC Lua) a length of 2^k, which a
/// conversion fills with that many values.
fn sparse(k: u32) -> String {
    let keys: Vec<String> = (0..=k).map(|i| format!("[{}] = 1", 1u64 << i)).collect();
    format!("{{ {} }}", keys.join(", "))
}

#[test]
fn a_sparse_table_counts_its_length_against_the_budget() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        // Within a generous deadline: converted, 2^40 values would never end.
        let code = format!("return {}", sparse(40));
        let result = isle
            .request()
            .timeout(std::time::Duration::from_secs(20))
            .eval::<Serde<serde::de::IgnoredAny>>(code.as_str());
        match result {
            Ok(_) => assert!(
                isle.eval::<i64>(format!("#{}", sparse(40)).as_str())
                    .unwrap()
                    < 1 << 18
            ),
            Err(err) => assert_eq!(
                lua_error(Err::<(), _>(err)).kind(),
                LuaErrorKind::Conversion
            ),
        }
        let code = format!("error({})", sparse(40));
        let err = lua_error(isle.eval::<()>(code.as_str()));
        assert!(
            err.value()
                .is_none_or(|v| v.as_array().is_none_or(|a| a.len() <= 10_000)),
            "an error value of {:?} elements",
            err.value().and_then(|v| v.as_array()).map(Vec::len)
        );
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[cfg(feature = "luau")]
#[test]
fn a_shared_buffer_counts_once_per_reference() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let code =
            "local b = buffer.create(2^20) local t = {} for i = 1, 64 do t[i] = b end return t";
        let err = lua_error(isle.eval::<Serde<Vec<String>>>(code));
        assert_eq!(err.kind(), LuaErrorKind::Conversion);
    });
}
