//! Round trips, pipelining and the isle lifecycle, each next to its floor
//! measured in the same run: the same work on raw mlua on the calling thread, and a raw
//! crossbeam round trip to another thread. CPU-bound scripts are in `benches/interrupt.rs`.
//! `isolation`: the same `eval` round trip with each isolation between requests.
//!
//! Run with: `cargo bench --bench round_trip`

use std::hint::black_box;
use std::thread;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mlua_isle::mlua::{Function, Lua, ObjectLike};
use mlua_isle::{Isle, IslePool, Isolation};

fn raw_lua() -> Lua {
    let lua = Lua::new();
    lua.load("function f(x) return x end").exec().unwrap();
    lua
}

fn isle() -> Isle {
    Isle::spawn(|lua| lua.load("function f(x) return x end").exec()).unwrap()
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");

    // Floors.
    let lua = raw_lua();
    let f: Function = lua.globals().get("f").unwrap();
    let one = lua.load("return 1").into_function().unwrap();
    group.bench_function("raw_mlua/eval_compiled", |b| {
        b.iter(|| black_box(one.call::<i64>(()).unwrap()))
    });
    group.bench_function("raw_mlua/eval_source", |b| {
        b.iter(|| black_box(lua.load("return 1").eval::<i64>().unwrap()))
    });
    group.bench_function("raw_mlua/call", |b| {
        b.iter(|| black_box(f.call::<i64>(black_box(7)).unwrap()))
    });
    let globals = lua.globals();
    group.bench_function("raw_mlua/call_global_by_name", |b| {
        b.iter(|| black_box(globals.call_function::<i64>("f", black_box(7)).unwrap()))
    });
    group.bench_function("raw_mlua/exec", |b| {
        // An `exec` closure run in place: the work itself is nil, so this is the call overhead.
        let exec = |lua: &Lua| -> mlua_isle::mlua::Result<i64> {
            black_box(lua);
            Ok(1)
        };
        b.iter(|| black_box(exec(&lua).unwrap()))
    });
    {
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
    }

    // Through an isle, from this (another) thread.
    let isle = isle();
    group.bench_function("isle/eval", |b| {
        b.iter(|| black_box(isle.eval::<i64>("return 1").unwrap()))
    });
    group.bench_function("isle/call", |b| {
        b.iter(|| black_box(isle.call::<i64>("f", black_box(7)).unwrap()))
    });
    group.bench_function("isle/exec", |b| {
        b.iter(|| black_box(isle.exec(|_| Ok(1i64)).unwrap()))
    });
    group.finish();
    isle.shutdown().unwrap();
}

fn pipelined(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut group = c.benchmark_group("pipelined");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(20);

    let lua = raw_lua();
    let f: Function = lua.globals().get("f").unwrap();
    group.bench_function("raw_mlua/call_10k", |b| {
        b.iter(|| {
            for i in 0..N {
                black_box(f.call::<i64>(i as i64).unwrap());
            }
        })
    });
    // What `call("f", x)` does on the Lua thread: look the global up, then call it.
    let globals = lua.globals();
    group.bench_function("raw_mlua/call_global_by_name_10k", |b| {
        b.iter(|| {
            for i in 0..N {
                black_box(globals.call_function::<i64>("f", i as i64).unwrap());
            }
        })
    });

    let isle = Isle::builder()
        .queue_capacity(N)
        .spawn(|lua| lua.load("function f(x) return x end").exec())
        .unwrap();
    group.bench_function("isle/spawn_call_10k_then_wait", |b| {
        b.iter(|| {
            let tasks: Vec<_> = (0..N)
                .map(|i| isle.spawn_call::<i64>("f", i as i64).unwrap())
                .collect();
            for task in tasks {
                black_box(task.wait().unwrap());
            }
        })
    });
    group.finish();
    isle.shutdown().unwrap();
}

fn lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle");
    group.bench_function("raw_thread_spawn_join", |b| {
        b.iter(|| thread::spawn(|| black_box(1)).join().unwrap())
    });
    group.bench_function("raw_mlua/new", |b| b.iter(|| black_box(Lua::new())));
    // The floor of an isle's life: a thread that creates a VM, reports it ready, then closes
    // it and is joined.
    group.bench_function("raw_thread_with_mlua", |b| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let thread = thread::spawn(move || {
                let lua = Lua::new();
                tx.send(()).unwrap();
                drop(lua);
            });
            rx.recv().unwrap();
            thread.join().unwrap();
        })
    });
    // On the spare thread the last isle left, which has made this VM meanwhile.
    group.bench_function("isle/spawn_shutdown", |b| {
        b.iter_batched(
            || (),
            |()| Isle::spawn(|_| Ok(())).unwrap().shutdown().unwrap(),
            BatchSize::SmallInput,
        )
    });
    // A thread name used once: a new thread, and a new VM made on it.
    let mut serial = 0_u64;
    group.bench_function("isle/spawn_shutdown_on_a_new_thread", |b| {
        b.iter_batched(
            || {
                serial += 1;
                format!("lifecycle-{serial}")
            },
            |name| {
                Isle::builder()
                    .thread_name(name)
                    .spawn(|_| Ok(()))
                    .unwrap()
                    .shutdown()
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// `eval("return 1")` with each isolation between requests: the shared globals (the floor),
/// a fresh environment per request, the whole sandbox preset, and a fresh VM per request
/// through a pool of one with a spare.
fn isolation(c: &mut Criterion) {
    let mut group = c.benchmark_group("isolation");
    let shared = Isle::spawn(|_| Ok(())).unwrap();
    group.bench_function("isle_shared/eval", |b| {
        b.iter(|| black_box(shared.eval::<i64>("return 1").unwrap()))
    });
    shared.shutdown().unwrap();
    let fresh = Isle::builder()
        .isolation(Isolation::FreshEnvironment)
        .spawn(|_| Ok(()))
        .unwrap();
    group.bench_function("isle_fresh_environment/eval", |b| {
        b.iter(|| black_box(fresh.eval::<i64>("return 1").unwrap()))
    });
    fresh.shutdown().unwrap();
    let sandboxed = Isle::builder().sandboxed().spawn(|_| Ok(())).unwrap();
    group.bench_function("isle_sandboxed/eval", |b| {
        b.iter(|| black_box(sandboxed.eval::<i64>("return 1").unwrap()))
    });
    sandboxed.shutdown().unwrap();
    let pool = IslePool::builder()
        .size(1)
        .isolation(Isolation::FreshVm)
        .spawn(|_| Ok(()))
        .unwrap();
    group.bench_function("pool_of_1_fresh_vm/eval", |b| {
        b.iter(|| black_box(pool.eval::<i64>("return 1").unwrap()))
    });
    pool.shutdown().unwrap();
    group.finish();
}

criterion_group!(benches, round_trip, pipelined, lifecycle, isolation);
criterion_main!(benches);
