//! A web service that runs users' Lua scripts on a sandboxed pool of isles.
//!
//! Clients send a Lua script and a JSON input; the script runs on an
//! [`AsyncIslePool`](mlua_isle::AsyncIslePool) under the sandbox preset, a memory limit and a
//! deadline, and its result comes back as JSON. The binary serves it:
//!
//! ```text
//! $ cargo run -p script_server -- --addr 127.0.0.1:8080 --timeout-ms 500 --memory-mib 32
//! listening on 127.0.0.1:8080
//! $ curl -s localhost:8080/run -H 'content-type: application/json' \
//!     -d '{"script": "local n = ... return {double = n * 2}", "input": 21}'
//! {"result":{"double":42}}
//! ```
//!
//! Flags: `--addr` (default `127.0.0.1:8080`; port `0` picks a free one, and the line printed
//! says which), `--members` (scripts running at once), `--timeout-ms`, `--memory-mib`,
//! `--queue` (scripts waiting for a member); see [`Config`] for the defaults. Ctrl-C or
//! `SIGTERM` stops it gracefully.
//!
//! # API
//!
//! ## `POST /run`
//!
//! The body is a JSON object: `{"script": "<Lua source>", "input": <any JSON>}` (`input` may
//! be left out: it is then `null`). The script is run as the body of a function called with
//! the input as its one argument, so it reads it with `...`:
//!
//! ```lua
//! local order = ...
//! local total = 0
//! for _, item in ipairs(order.items) do total = total + item.price * item.count end
//! return { total = total }
//! ```
//!
//! JSON objects become tables, arrays become sequences, `null` becomes `nil`. The script's
//! first return value is the result (a script that is a single expression, such as
//! `... * 2`, returns its value, as in Lua's own prompt), converted back to JSON (`nil` or no value is `null`; an
//! empty table is `{}` unless it came from a JSON array). The answer is
//! `200 {"result": <JSON>}`.
//!
//! The script runs in the strict sandbox (no files, processes, `debug`, modules or bytecode;
//! read-only libraries; `print` goes nowhere) in a global environment of its own, emptied when
//! it ends, under the memory limit and the deadline. The deadline counts from the
//! moment the script is queued, so time spent waiting for a free member counts.
//!
//! ## `GET /stats`
//!
//! The pool's [`PoolStats`](mlua_isle::PoolStats) as a JSON object: `size`, `idle`, `spares`,
//! `busy`, `queued`, `completed`, `failed`, `cancelled`, `timed_out`, `recycled` (total),
//! `replaced`, `abandoned`, `failed_starts`.
//!
//! ## Errors
//!
//! A request that gets no result is answered with `{"error": "<message>", "kind": "<kind>"}`
//! and the status of its kind ([`ErrorKind`]). Whatever the script itself did wrong is `422`
//! (the request was understood, but its script produced no result) and `kind` says what; `429`
//! and `503` say to try again later, or elsewhere. The deadline counts time spent queued, so
//! on a busy service a script may also time out waiting for its turn.
//!
//! | Outcome                                                      | Status | `kind`          |
//! |--------------------------------------------------------------|--------|-----------------|
//! | the body is not `{"script": string, "input": any}`           | 400    | `bad_request`   |
//! | the script does not compile                                  | 422    | `syntax`        |
//! | the script raised an error                                   | 422    | `runtime`       |
//! | the script ran past its deadline                             | 422    | `timeout`       |
//! | the script hit the memory limit                              | 422    | `memory`        |
//! | the result has no JSON form (a function, a cycle, too deep)  | 422    | `conversion`    |
//! | the queue of waiting scripts is full                         | 429    | `queue_full`    |
//! | the service is shutting down                                 | 503    | `shutting_down` |
//! | the service itself failed                                    | 500    | `internal`      |
//!
//! # What it shows of `mlua-isle`
//!
//! - The sandbox preset with its limits, for code nobody reviewed: each script runs in an
//!   environment of its own ([`Isolation::FreshEnvironment`](mlua_isle::Isolation)) and gets its
//!   input as arguments ([`eval_with`](mlua_isle::AsyncIslePool::eval_with)).
//! - [`Serde`](mlua_isle::Serde): JSON in and out, converted on the Lua thread with a depth
//!   limit, so a result nested 100 000 levels deep or containing itself is a clean error.
//! - Load shedding: requests are queued with `try_enqueue`, so a full queue answers `429` at
//!   once instead of piling up waiting clients.
//! - Cancellation: when a client hangs up, hyper drops its handler's future; that drops the
//!   request's [`AsyncTask`](mlua_isle::AsyncTask), which cancels the script, queued or
//!   running, so the member is free for the next one. No code is needed for it.
//! - Graceful shutdown ([`run`]): the listener closes, new scripts are turned away, running
//!   ones finish and are answered, then the pool shuts down.
//!
//! # Caveats
//!
//! - Scripts share their VM with the scripts before and after them, isolated by the sandbox
//!   (fresh environment, read-only libraries). For stronger isolation, run each on a VM of its
//!   own with [`Isolation::FreshVm`](mlua_isle::Isolation::FreshVm) on the pool, at the price
//!   of a VM start per request (made ahead of time by the pool's spares).
//! - Hyper notices that a client hung up when it next reads from the connection; a client
//!   that goes away while still sending its body is noticed then, before its script starts.
//! - A graceful shutdown waits for every open connection to finish its request: a client that
//!   never finishes sending its body keeps the service from exiting.
//! - JSON `null` inside arrays becomes a hole (`nil`), so `[1, null]` reaches the script as a
//!   sequence of length 1.

#![doc(test(attr(deny(warnings))))]

mod config;
mod error;
mod routes;
mod scripts;
mod server;

pub use config::Config;
pub use error::ErrorKind;
pub use server::{run, ServerError};
