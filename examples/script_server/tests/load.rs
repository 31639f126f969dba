//! A bounded load run: many clients at once, mixing good scripts with ones that hit the
//! deadline or the memory limit.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CLIENTS: usize = 200;
const REQUESTS_PER_CLIENT: usize = 20;

/// What a request sends, and which answers it may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Script {
    Good,
    Endless,
    MemoryBomb,
}

impl Script {
    /// About one request in 250 loops, one in 20 exhausts its memory, the rest compute a
    /// little; `n` is scrambled so that each kind is spread over the clients and over time.
    fn nth(n: usize) -> Script {
        match (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56 {
            0 => Script::Endless,
            1..=12 => Script::MemoryBomb,
            _ => Script::Good,
        }
    }

    fn source(self) -> &'static str {
        match self {
            Script::Good => {
                "local n = ... local sum = 0 for i = 1, n do sum = sum + i end return sum"
            }
            Script::Endless => "while true do end",
            Script::MemoryBomb => {
                "local t = {} while true do t[#t + 1] = string.rep('x', 1 << 20) end"
            }
        }
    }

    /// The answers this script may get: its own outcome, or the load's (turned away from a
    /// full queue, or past the deadline while waiting in it).
    fn expects(self, status: StatusCode, body: &Value) -> bool {
        let kind = body["kind"].as_str();
        match (self, status.as_u16(), kind) {
            (_, 429, Some("queue_full")) | (_, 422, Some("timeout")) => true,
            (Script::Good, 200, _) => body["result"] == 5050,
            (Script::MemoryBomb, 422, Some("memory")) => true,
            _ => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_expected_answer_under_load() {
    let server = Server::start(&[
        "--members",
        "2",
        "--timeout-ms",
        "250",
        "--memory-mib",
        "8",
        "--queue",
        "200",
    ]);
    let client = reqwest::Client::new();
    let url = format!("http://{}/run", server.addr);
    let start = Instant::now();
    let clients = (0..CLIENTS).map(|c| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let mut answers = Vec::with_capacity(REQUESTS_PER_CLIENT);
            for i in 0..REQUESTS_PER_CLIENT {
                let script = Script::nth(c * REQUESTS_PER_CLIENT + i);
                let body = json!({ "script": script.source(), "input": 100 });
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .expect("an answer");
                let status = response.status();
                let body: Value = response.json().await.expect("a JSON body");
                answers.push((script, status, body, sent.elapsed()));
            }
            answers
        })
    });
    let run = join_all(clients.collect());
    let answers: Vec<_> = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the load run ends in time")
        .into_iter()
        .flatten()
        .collect();
    let elapsed = start.elapsed();

    assert_eq!(answers.len(), CLIENTS * REQUESTS_PER_CLIENT);
    let mut outcomes = BTreeMap::new();
    for (script, status, body, _) in &answers {
        assert!(script.expects(*status, body), "{script:?}: {status} {body}");
        let outcome = (
            *script,
            status.as_u16(),
            body["kind"].as_str().map(str::to_owned),
        );
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    let mut latencies: Vec<_> = answers.iter().map(|answer| answer.3).collect();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let throughput = answers.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{} requests in {elapsed:.2?}: {throughput:.0} requests/s, p99 latency {p99:.2?}",
        answers.len()
    );
    for ((script, status, kind), count) in &outcomes {
        eprintln!(
            "  {script:?} -> {status} {}: {count}",
            kind.as_deref().unwrap_or("ok")
        );
    }
    let count = |script, status, kind: Option<&str>| {
        outcomes
            .get(&(script, status, kind.map(str::to_owned)))
            .copied()
            .unwrap_or(0)
    };
    assert!(count(Script::Good, 200, None) > 0);
    assert!(count(Script::Endless, 422, Some("timeout")) > 0);
    assert!(count(Script::MemoryBomb, 422, Some("memory")) > 0);

    // Every 200 is a request the pool completed, and no request was given up on.
    let stats = server.stats_until("idle", |s| s["busy"] == 0).await;
    let ok: usize = outcomes
        .iter()
        .filter(|(o, _)| o.1 == 200)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(stats["completed"], json!(ok), "{stats}");
    assert_eq!(
        (&stats["cancelled"], &stats["abandoned"]),
        (&json!(0), &json!(0)),
        "{stats}"
    );
    // The service is still up.
    let answer = server.run(Script::Good.source(), json!(100)).await;
    assert_eq!(answer, (StatusCode::OK, json!({ "result": 5050 })));
}

/// Awaits every task, in order.
async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("the client task ends"));
    }
    results
}
