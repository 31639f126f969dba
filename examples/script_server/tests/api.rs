//! `POST /run`: each outcome with its status and kind.

mod common;

use common::{assert_error, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A server with small limits: reached at once by the scripts that test them, far from the
/// others.
fn server() -> Server {
    Server::start(&[
        "--members",
        "2",
        "--timeout-ms",
        "1000",
        "--memory-mib",
        "16",
    ])
}

#[tokio::test]
async fn script_gets_its_input_and_returns_json() {
    let server = server();
    let script = "local order = ... \
        local total = 0 \
        for _, item in ipairs(order.items) do total = total + item.price * item.count end \
        return { total = total, customer = order.customer, none = order.missing }";
    let input = json!({ "customer": "ada", "items": [
        { "price": 2, "count": 3 },
        { "price": 10, "count": 1 },
    ]});
    let answer = server.run(script, input).await;
    assert_eq!(
        answer,
        (
            StatusCode::OK,
            json!({ "result": { "total": 16, "customer": "ada" } })
        )
    );
}

#[tokio::test]
async fn json_values_keep_their_shape_through_lua() {
    let server = server();
    let input =
        json!({ "list": [1, 2.5, "three", true, {}], "empty": [], "nested": { "a": { "b": [] } } });
    let answer = server.run("return ...", input.clone()).await;
    assert_eq!(answer, (StatusCode::OK, json!({ "result": input })));
    // No input and no result are both null.
    let answer = server
        .post(json!({ "script": "local input = ... assert(input == nil)" }))
        .await;
    assert_eq!(answer, (StatusCode::OK, json!({ "result": Value::Null })));
}

#[tokio::test]
async fn a_body_that_is_no_run_request_is_400() {
    let server = server();
    let json = "application/json";
    for answer in [
        server.post_raw("not json", json).await,
        server.post_raw(r#"{"script": "return 1""#, json).await,
        server.post_raw(r#"{"input": 1}"#, json).await,
        server.post_raw(r#"{"script": 1}"#, json).await,
        server
            .post_raw(r#"{"script": "return 1", "inptu": 1}"#, json)
            .await,
        server
            .post_raw(r#"{"script": "return 1"}"#, "text/plain")
            .await,
        // Deeper than the JSON parser goes: the input's depth is bounded.
        server
            .post_raw(
                format!(
                    r#"{{"script": "", "input": {}{}}}"#,
                    "[".repeat(1000),
                    "]".repeat(1000)
                ),
                json,
            )
            .await,
    ] {
        assert_error(&answer, 400, "bad_request");
    }
}

#[tokio::test]
async fn a_script_that_does_not_compile_is_422_syntax() {
    let server = server();
    let answer = server.run("return 1 +", Value::Null).await;
    assert_error(&answer, 422, "syntax");
    assert!(
        answer.1["error"].as_str().unwrap().contains(":1:"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn bytecode_is_refused_as_a_syntax_error() {
    let server = server();
    let answer = server.run("\u{1b}LuaT\u{0}", Value::Null).await;
    assert_error(&answer, 422, "syntax");
}

#[tokio::test]
async fn a_script_error_is_422_runtime() {
    let server = server();
    let answer = server.run("error('out of stock', 0)", Value::Null).await;
    assert_error(&answer, 422, "runtime");
    assert_eq!(answer.1["error"], "out of stock");
    // What the sandbox took away is a runtime error too.
    let answer = server
        .run("return io.open('/etc/passwd')", Value::Null)
        .await;
    assert_error(&answer, 422, "runtime");
}

#[tokio::test]
async fn a_script_past_its_deadline_is_422_timeout() {
    let server = server();
    let answer = server
        .run(
            "while true do pcall(function() while true do end end) end",
            Value::Null,
        )
        .await;
    assert_error(&answer, 422, "timeout");
}

#[tokio::test]
async fn a_script_over_the_memory_limit_is_422_memory() {
    let server = server();
    let bomb = "local t = {} while true do t[#t + 1] = string.rep('x', 4096) .. #t end";
    assert_error(&server.run(bomb, Value::Null).await, 422, "memory");
    // One big allocation as well as many small ones.
    let big = "return string.rep('x', 64 * 1024 * 1024)";
    assert_error(&server.run(big, Value::Null).await, 422, "memory");
}

#[tokio::test]
async fn a_result_without_json_form_is_422_conversion() {
    let server = server();
    for script in [
        "return print",
        "return coroutine.create(print)",
        "return { f = print }",
    ] {
        assert_error(&server.run(script, Value::Null).await, 422, "conversion");
    }
}

#[tokio::test]
async fn a_deeply_nested_result_is_422_conversion() {
    let server = server();
    let deep = "local t = {} for _ = 1, 100000 do t = { t } end return t";
    assert_error(&server.run(deep, Value::Null).await, 422, "conversion");
}

#[tokio::test]
async fn a_cyclic_result_is_422_conversion() {
    let server = server();
    let cyclic = "local t = {} t.self = t return t";
    assert_error(&server.run(cyclic, Value::Null).await, 422, "conversion");
}

#[tokio::test]
async fn a_result_that_would_expand_without_bound_is_422_conversion() {
    let server = server();
    // A few kilobytes in Lua; each level holds the one below twice: 2^40 values as JSON.
    let shared = "local t = {} for i = 1, 40 do t = { t, t } end return t";
    assert_error(&server.run(shared, Value::Null).await, 422, "conversion");
    let answer = server.run("return 1", Value::Null).await;
    assert_eq!(answer, (StatusCode::OK, json!({ "result": 1 })));
}

#[tokio::test]
async fn scripts_do_not_see_each_other() {
    let server = Server::start(&["--members", "1"]);
    let (status, _) = server.run("leftover = 1 _G.also = 2", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let answer = server.run("return { leftover, also }", Value::Null).await;
    assert_eq!(answer, (StatusCode::OK, json!({ "result": {} })));
}

#[tokio::test]
async fn a_full_queue_is_429_at_once() {
    let server = Server::start(&["--members", "1", "--queue", "1", "--timeout-ms", "60000"]);
    // One script holds the only member, a second one fills the queue.
    let running = server.send_raw("while true do end").await;
    server.stats_until("running", |s| s["busy"] == 1).await;
    let queued = server.send_raw("while true do end").await;
    server.stats_until("queued", |s| s["queued"] == 1).await;
    assert_error(
        &server.run("return 1", Value::Null).await,
        429,
        "queue_full",
    );
    // Hanging up frees the member and the queue.
    drop((running, queued));
    server
        .stats_until("idle", |s| s["busy"] == 0 && s["queued"] == 0)
        .await;
    let answer = server.run("return 1", Value::Null).await;
    assert_eq!(answer, (StatusCode::OK, json!({ "result": 1 })));
}

#[tokio::test]
async fn stats_count_what_the_scripts_did() {
    let server = server();
    server.run("return 1", Value::Null).await;
    server.run("error('no')", Value::Null).await;
    server.run("while true do end", Value::Null).await;
    // The member whose script timed out is replaced in the background.
    let stats = server
        .stats_until("both members serving", |s| s["size"] == 2)
        .await;
    assert_eq!(
        (&stats["completed"], &stats["failed"], &stats["timed_out"]),
        (&json!(1), &json!(1), &json!(1)),
        "{stats}"
    );
}
