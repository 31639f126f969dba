//! What requests report to `tracing`: a span per request (ids, kind, queue wait, run time,
//! outcome) that the request's code runs in, and events for cancels, deadlines, hard stops and
//! pool recycling. A layer records everything the process emits; each test finds its own
//! records by the name of its isle's thread.
#![cfg(feature = "tracing")]

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use mlua_isle::{Isle, IsleError, IslePool, Recycle};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone)]
struct SpanRecord {
    name: &'static str,
    thread: Option<String>,
    fields: HashMap<String, String>,
    closed: bool,
}

#[derive(Debug, Clone)]
struct EventRecord {
    message: String,
    level: tracing::Level,
    thread: Option<String>,
    fields: HashMap<String, String>,
    /// Index into [`Log::spans`] of the span the event belongs to.
    parent: Option<usize>,
}

#[derive(Debug, Default)]
struct Log {
    spans: Vec<SpanRecord>,
    events: Vec<EventRecord>,
    /// Live span ids (the registry reuses them) to their record.
    live: HashMap<u64, usize>,
}

struct Recorder;

static LOG: Mutex<Option<Log>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

fn log() -> MutexGuard<'static, Option<Log>> {
    LOG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the recording subscriber for the whole process (spans open on Lua threads).
fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        *log() = Some(Log::default());
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

fn thread_name() -> Option<String> {
    std::thread::current().name().map(str::to_string)
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut log = log();
        let log = log.as_mut().unwrap();
        log.spans.push(SpanRecord {
            name: attrs.metadata().name(),
            thread: thread_name(),
            fields,
            closed: false,
        });
        let index = log.spans.len() - 1;
        log.live.insert(id.into_u64(), index);
        CHANGED.notify_all();
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut log = log();
        let log = log.as_mut().unwrap();
        if let Some(&index) = log.live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut log.spans[index].fields));
        }
        CHANGED.notify_all();
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let parent = ctx.event_span(event).map(|span| span.id().into_u64());
        let mut log = log();
        let log = log.as_mut().unwrap();
        let parent = parent.and_then(|id| log.live.get(&id).copied());
        log.events.push(EventRecord {
            message,
            level: *event.metadata().level(),
            thread: thread_name(),
            fields,
            parent,
        });
        CHANGED.notify_all();
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut log = log();
        let log = log.as_mut().unwrap();
        if let Some(index) = log.live.remove(&id.into_u64()) {
            log.spans[index].closed = true;
        }
        CHANGED.notify_all();
    }
}

/// Waits until `found` finds something in the log (the hang guard is the only bound).
fn wait_for<T>(what: &str, mut found: impl FnMut(&Log) -> Option<T>) -> T {
    let until = Instant::now() + HANG;
    let mut log = log();
    loop {
        if let Some(value) = found(log.as_ref().unwrap()) {
            return value;
        }
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "never recorded: {what}");
        log = CHANGED.wait_timeout(log, left).unwrap().0;
    }
}

/// The closed request spans opened on thread `thread`, in order.
fn closed_requests(log: &Log, thread: &str) -> Vec<(usize, SpanRecord)> {
    log.spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == "request" && s.closed && s.thread.as_deref() == Some(thread))
        .map(|(i, s)| (i, s.clone()))
        .collect()
}

/// Waits for the `n`-th (from 1) closed request span of thread `thread`.
fn nth_request(thread: &str, n: usize) -> (usize, SpanRecord) {
    wait_for(&format!("request span {n} on {thread}"), |log| {
        closed_requests(log, thread).into_iter().nth(n - 1)
    })
}

fn isle(thread: &str) -> Isle {
    install();
    Isle::builder()
        .thread_name(thread)
        .spawn(|lua| {
            let note = lua.create_function(|_, what: String| {
                tracing::info!(what = what.as_str(), "from a host function");
                Ok(())
            })?;
            lua.globals().set("note", note)
        })
        .unwrap()
}

#[test]
fn a_request_span_has_ids_kind_queue_wait_run_time_and_outcome() {
    within_hang_guard(|| {
        let isle = isle("trace-fields");
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
        let (_, span) = nth_request("trace-fields", 1);
        let f = &span.fields;
        assert_eq!(f["kind"], "eval");
        assert_eq!(f["outcome"], "ok");
        for numeric in ["isle", "request", "queue_wait_us", "run_us"] {
            assert!(f[numeric].parse::<u64>().is_ok(), "{numeric}: {f:?}");
        }
    });
}

#[test]
fn each_kind_of_request_is_named_and_ids_are_distinct() {
    within_hang_guard(|| {
        let isle = isle("trace-kinds");
        isle.call::<String>("tostring", 1).unwrap();
        isle.exec(|lua| lua.load("return 1").eval::<i64>()).unwrap();
        isle.spawn_eval::<i64>("2").unwrap().wait().unwrap();
        let function = isle
            .eval_function("return function() return 3 end")
            .unwrap();
        isle.call_function::<i64>(&function, ()).unwrap();
        let kinds: Vec<String> = (1..=5)
            .map(|n| nth_request("trace-kinds", n).1.fields["kind"].clone())
            .collect();
        assert_eq!(
            kinds,
            ["call", "exec", "eval", "eval_function", "call_function"]
        );
        let requests: std::collections::HashSet<String> = (1..=5)
            .map(|n| nth_request("trace-kinds", n).1.fields["request"].clone())
            .collect();
        assert_eq!(requests.len(), 5);
        let isles: std::collections::HashSet<String> = (1..=5)
            .map(|n| nth_request("trace-kinds", n).1.fields["isle"].clone())
            .collect();
        assert_eq!(isles.len(), 1);
    });
}

#[test]
fn code_the_request_runs_is_inside_its_span() {
    within_hang_guard(|| {
        let isle = isle("trace-nested");
        isle.eval::<()>("note('inside')").unwrap();
        let (index, _) = nth_request("trace-nested", 1);
        let log = log();
        let event = log
            .as_ref()
            .unwrap()
            .events
            .iter()
            .find(|e| e.fields.get("what").map(String::as_str) == Some("inside"))
            .cloned()
            .unwrap();
        assert_eq!(event.parent, Some(index));
    });
}

#[test]
fn a_lua_error_is_the_outcome() {
    within_hang_guard(|| {
        let isle = isle("trace-error");
        assert!(isle.eval::<()>("error('boom')").is_err());
        assert_eq!(
            nth_request("trace-error", 1).1.fields["outcome"],
            "lua_error"
        );
    });
}

/// The event with `message` that belongs to the span at `index`.
fn event_in(index: usize, message: &str) -> EventRecord {
    wait_for(&format!("event {message:?} in span {index}"), |log| {
        log.events
            .iter()
            .find(|e| e.parent == Some(index) && e.message == message)
            .cloned()
    })
}

#[test]
fn a_passed_deadline_is_an_event_and_the_outcome() {
    within_hang_guard(|| {
        let isle = isle("trace-deadline");
        let err = isle
            .request()
            .timeout(Duration::from_millis(30))
            .eval::<()>("while true do end")
            .unwrap_err();
        assert!(err.is_timeout());
        let (index, span) = nth_request("trace-deadline", 1);
        assert_eq!(span.fields["outcome"], "timeout");
        assert_eq!(
            event_in(index, "request deadline passed").level,
            tracing::Level::INFO
        );
    });
}

#[test]
fn a_cancel_is_an_event_and_the_outcome() {
    within_hang_guard(|| {
        install();
        let (isle, started) = isle_with_started(Isle::builder().thread_name("trace-cancel"));
        let task = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        started.recv().unwrap();
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        let (index, span) = nth_request("trace-cancel", 1);
        assert_eq!(span.fields["outcome"], "cancelled");
        assert_eq!(
            event_in(index, "request cancelled").level,
            tracing::Level::DEBUG
        );
    });
}

#[test]
fn a_request_cancelled_in_the_queue_is_an_event_without_a_span() {
    within_hang_guard(|| {
        install();
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let (isle, started) = isle_with_started(Isle::builder().thread_name("trace-queued"));
        let busy = isle
            .spawn_exec(move |lua| {
                lua.load("started()").exec()?;
                let _ = held.lock().unwrap().recv();
                Ok(())
            })
            .unwrap();
        started.recv().unwrap();
        let queued = isle.spawn_eval::<()>("return").unwrap();
        queued.cancel();
        assert!(queued.wait().unwrap_err().is_cancelled());
        release.send(()).unwrap();
        busy.wait().unwrap();
        let me = thread_name();
        let event = wait_for("the queued cancel", |log| {
            log.events
                .iter()
                .find(|e| e.thread == me && e.message == "request cancelled before it started")
                .cloned()
        });
        assert_eq!(event.fields["kind"], "eval");
        assert_eq!(event.parent, None);
    });
}

#[test]
fn a_hard_stop_is_a_warning_naming_the_isle() {
    within_hang_guard(|| {
        install();
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let isle = Isle::builder()
            .thread_name("trace-hard-stop")
            .grace_period(Duration::from_millis(50))
            .spawn(|_| Ok(()))
            .unwrap();
        // A host function that ignores its deadline.
        let err = isle
            .request()
            .timeout(Duration::from_millis(30))
            .exec(move |_| {
                let _ = held.lock().unwrap().recv();
                Ok(())
            })
            .unwrap_err();
        assert!(err.is_timeout());
        assert!(matches!(
            isle.eval::<()>("return"),
            Err(IsleError::Abandoned)
        ));
        let event = wait_for("the hard stop", |log| {
            log.events
                .iter()
                .find(|e| e.message.starts_with("hard stop"))
                .cloned()
        });
        assert_eq!(event.level, tracing::Level::WARN);
        assert_eq!(event.fields["outcome"], "timeout");
        release.send(()).unwrap();
        let (_, span) = nth_request("trace-hard-stop", 1);
        assert_eq!(span.fields["isle"], event.fields["isle"]);
    });
}

#[cfg(feature = "tokio")]
#[test]
fn a_coroutine_request_runs_every_stretch_in_its_span() {
    within_hang_guard(|| {
        install();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (isle, driver) = mlua_isle::AsyncIsle::builder()
                .thread_name("trace-coroutine")
                .spawn_async(|lua| {
                    let pause = lua.create_async_function(|_, ()| async {
                        tokio::task::yield_now().await;
                        tracing::info!("after a pause");
                        Ok(())
                    })?;
                    lua.globals().set("pause", pause)
                })
                .await
                .unwrap();
            isle.coroutine_eval::<()>("pause() pause()").await.unwrap();
            drop(isle);
            driver.shutdown().await.unwrap();
        });
        let (index, span) = nth_request("trace-coroutine", 1);
        assert_eq!(span.fields["kind"], "coroutine_eval");
        assert_eq!(span.fields["outcome"], "ok");
        let log = log();
        let inside = log
            .as_ref()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.message == "after a pause" && e.parent == Some(index))
            .count();
        assert_eq!(inside, 2);
    });
}

#[test]
fn pool_recycling_and_replacement_are_events() {
    within_hang_guard(|| {
        install();
        let pool = IslePool::builder()
            .size(1)
            .thread_name("trace-pool")
            .recycle(Recycle::new().after_requests(1))
            .spawn(|_| Ok(()))
            .unwrap();
        assert_eq!(pool.eval::<i64>("1").unwrap(), 1);
        let recycled = wait_for("the recycle", |log| {
            log.events
                .iter()
                .find(|e| e.message == "pool member recycled")
                .cloned()
        });
        assert_eq!(recycled.fields["cause"], "requests");
        assert_eq!(recycled.fields["member"], "0");
        let replaced = wait_for("the replacement", |log| {
            log.events
                .iter()
                .find(|e| e.message == "pool member replaced")
                .cloned()
        });
        assert_eq!(replaced.fields["pool"], recycled.fields["pool"]);
        assert_eq!(pool.eval::<i64>("2").unwrap(), 2);
        pool.shutdown().unwrap();
    });
}
