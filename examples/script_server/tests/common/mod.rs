//! The service as its clients see it: the real binary, started on a free port.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long anything may take before a test is considered hung.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// A running `script_server`, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    client: reqwest::Client,
}

impl Server {
    /// Starts the binary with `args` on `127.0.0.1:0` and reads the address it prints.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_script_server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let line = line_rx
            .recv_timeout(HANG_GUARD)
            .expect("the address is printed");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|addr| addr.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Server {
            child,
            addr,
            client: reqwest::Client::new(),
        }
    }

    /// `POST /run` with `script` and `input`: the status and the JSON body.
    pub async fn run(&self, script: &str, input: Value) -> (StatusCode, Value) {
        self.post(json!({ "script": script, "input": input })).await
    }

    /// `POST /run` with `script` from a task of its own: the request goes on while the caller
    /// does something else.
    pub fn spawn_run(&self, script: &str) -> tokio::task::JoinHandle<(StatusCode, Value)> {
        let body = json!({ "script": script });
        tokio::spawn(answer(
            self.client.post(self.url("/run")).json(&body).send(),
        ))
    }

    /// `POST /run` with `body` as JSON.
    pub async fn post(&self, body: Value) -> (StatusCode, Value) {
        let request = self.client.post(self.url("/run")).json(&body).send();
        answer(request).await
    }

    /// `POST /run` with a raw body and content type.
    pub async fn post_raw(
        &self,
        body: impl Into<String>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let request = self
            .client
            .post(self.url("/run"))
            .header("content-type", content_type)
            .body(body.into())
            .send();
        answer(request).await
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Value {
        let (status, stats) = answer(self.client.get(self.url("/stats")).send()).await;
        assert_eq!(status, StatusCode::OK);
        stats
    }

    /// Polls `GET /stats` until `done` holds for them, and returns them.
    pub async fn stats_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let stats = self.stats().await;
            if done(&stats) {
                return stats;
            }
            assert!(start.elapsed() < HANG_GUARD, "still not {what}: {stats}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends a whole `POST /run` request on a connection of its own, without reading the
    /// answer: dropping the stream hangs up.
    pub async fn send_raw(&self, script: &str) -> TcpStream {
        let body = json!({ "script": script }).to_string();
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream
            .write_all(request_head(body.len(), false).as_bytes())
            .await
            .unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        stream
    }

    /// Sends Ctrl-C to the process.
    #[cfg(unix)]
    pub fn interrupt(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not
        // yet waited for, so the id cannot have been reused.
        let sent = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(sent, 0, "SIGINT sent");
    }

    /// Waits for the process to exit.
    pub async fn wait_for_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < HANG_GUARD, "the server did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether a new connection is refused.
    pub async fn refuses_connections(&self) -> bool {
        TcpStream::connect(self.addr).await.is_err()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The head of a `POST /run` request for a JSON body of `len` bytes, asking the server to
/// close the connection after answering (and, with `expect_continue`, to say when it is ready
/// for the body).
pub fn request_head(len: usize, expect_continue: bool) -> String {
    let expect = if expect_continue {
        "expect: 100-continue\r\n"
    } else {
        ""
    };
    format!(
        "POST /run HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n{expect}\r\n"
    )
}

/// Reads one response head (through the blank line) from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.expect("a response head");
        head.push(byte);
    }
    String::from_utf8(head).unwrap()
}

/// Reads a whole response, up to the server closing the connection: its status and JSON body.
pub async fn read_response(stream: &mut TcpStream) -> (StatusCode, Value) {
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = StatusCode::from_u16(status.expect("a status line")).unwrap();
    (status, serde_json::from_str(body).expect("a JSON body"))
}

async fn answer(
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
) -> (StatusCode, Value) {
    let response = request.await.expect("an answer");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

/// Asserts that `answer` is the error of `kind` with `status`.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: u16, kind: &str) {
    let (got, body) = answer;
    assert_eq!(
        (got.as_u16(), body["kind"].as_str()),
        (status, Some(kind)),
        "{body}"
    );
    assert!(body["error"].is_string(), "{body}");
}
