//! A client hanging up, and Ctrl-C.

#![cfg(unix)]

mod common;

use std::time::Duration;

use common::{assert_error, read_head, read_response, request_head, Server, HANG_GUARD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Computes for about half a second.
const HALF_SECOND: &str =
    "local start = os.clock() while os.clock() - start < 0.5 do end return 'done'";

#[tokio::test]
async fn a_client_hanging_up_cancels_its_script() {
    // One member, and a deadline far beyond the test: only the cancel can free it.
    let server = Server::start(&["--members", "1", "--timeout-ms", "600000"]);
    let client = server.send_raw("while true do end").await;
    server.stats_until("running", |s| s["busy"] == 1).await;
    drop(client);
    let stats = server
        .stats_until("cancelled", |s| s["cancelled"] == 1 && s["busy"] == 0)
        .await;
    assert_eq!(stats["timed_out"], 0, "{stats}");
    // The member is free: the next script runs at once.
    let answer = tokio::time::timeout(HANG_GUARD, server.run("return 'next'", Value::Null))
        .await
        .expect("the next script runs");
    assert_eq!(answer, (StatusCode::OK, json!({ "result": "next" })));
}

#[tokio::test]
async fn ctrl_c_lets_running_scripts_finish_then_exits_0() {
    let mut server = Server::start(&["--members", "1", "--timeout-ms", "10000"]);
    let running = server.spawn_run(HALF_SECOND);
    server.stats_until("running", |s| s["busy"] == 1).await;
    server.interrupt();
    let answer = tokio::time::timeout(HANG_GUARD, running)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(answer, (StatusCode::OK, json!({ "result": "done" })));
    assert!(server.wait_for_exit().await.success());
}

#[tokio::test]
async fn scripts_arriving_during_shutdown_get_503_and_new_connections_are_refused() {
    let mut server = Server::start(&["--members", "1"]);
    // A request under way: the server has its head and waits for its body.
    let body = json!({ "script": "return 1" }).to_string();
    let mut late = TcpStream::connect(server.addr).await.unwrap();
    late.write_all(request_head(body.len(), true).as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut late)
        .await
        .starts_with("HTTP/1.1 100 Continue"));
    server.interrupt();
    // The listener closes once the server has begun to shut down.
    let start = std::time::Instant::now();
    while !server.refuses_connections().await {
        assert!(
            start.elapsed() < HANG_GUARD,
            "new connections still accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    late.write_all(body.as_bytes()).await.unwrap();
    assert_error(&read_response(&mut late).await, 503, "shutting_down");
    assert!(server.wait_for_exit().await.success());
}
