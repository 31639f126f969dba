//! What the `tracing` feature costs a round trip: the same `eval` with no subscriber
//! interested, and with a subscriber that takes every span and event and discards them (the
//! cost of building them, without any output). The floor, measured in the same run, is the
//! crossbeam round trip to another thread; the same `eval` with the feature off is
//! `round_trip/isle/eval` in `benches/round_trip.rs`.
//!
//! Run with: `cargo bench --features tracing --bench tracing`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use criterion::{criterion_group, criterion_main, Criterion};
use mlua_isle::Isle;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// Whether [`Discard`] is interested: the switch between the two measurements.
static LISTENING: AtomicBool = AtomicBool::new(false);

/// Takes everything while [`LISTENING`], keeps nothing.
struct Discard {
    next: AtomicU64,
}

impl Subscriber for Discard {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Asked each time, so that the switch takes effect.
        Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        LISTENING.load(Ordering::Relaxed)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        black_box(span);
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        black_box(values);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        black_box(event);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn tracing_cost(c: &mut Criterion) {
    tracing::subscriber::set_global_default(Discard {
        next: AtomicU64::new(1),
    })
    .unwrap();
    let mut group = c.benchmark_group("tracing");

    let (to_echo, echo_rx) = crossbeam_channel::bounded::<u64>(1);
    let (echo_tx, from_echo) = crossbeam_channel::bounded::<u64>(1);
    let echo = thread::spawn(move || {
        while let Ok(x) = echo_rx.recv() {
            echo_tx.send(x).unwrap();
        }
    });
    group.bench_function("raw_crossbeam_round_trip", |b| {
        b.iter(|| {
            to_echo.send(black_box(7)).unwrap();
            black_box(from_echo.recv().unwrap())
        })
    });
    drop(to_echo);
    echo.join().unwrap();

    let isle = Isle::spawn(|_| Ok(())).unwrap();
    LISTENING.store(false, Ordering::Relaxed);
    group.bench_function("isle/eval/not_listening", |b| {
        b.iter(|| black_box(isle.eval::<i64>("return 1").unwrap()))
    });
    LISTENING.store(true, Ordering::Relaxed);
    group.bench_function("isle/eval/discarding_subscriber", |b| {
        b.iter(|| black_box(isle.eval::<i64>("return 1").unwrap()))
    });
    LISTENING.store(false, Ordering::Relaxed);
    group.finish();
}

criterion_group!(benches, tracing_cost);
criterion_main!(benches);
