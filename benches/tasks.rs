//! The `task` library: spawn + join, channels, host request/reply, CPU-bound code in a task
//! against raw mlua, and the memory a sleeping task costs (printed, not timed).
//!
//! Each timed batch runs inside one request and ends with a full collection, so that a GC
//! cycle cannot hide between batches.
//!
//! Run with: `cargo bench --bench tasks --features tokio`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mlua_isle::mlua::Lua;
use mlua_isle::{host, Isle, TaskLibrary};

/// Counts the bytes the process has allocated and not freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn isle() -> Isle {
    Isle::builder()
        .task_library(TaskLibrary::new())
        .spawn(|lua| {
            lua.load(
                r#"
                function spawn_join(n)
                    local f = function() end
                    for i = 1, n do task.spawn(f):join() end
                    collectgarbage()
                end
                function ping_pong(n)
                    local ping, pong = task.channel(0), task.channel(0)
                    local echo = task.spawn(function()
                        for v in ping:iter() do pong:send(v) end
                    end)
                    local pinger = task.spawn(function()
                        for i = 1, n do ping:send(i) pong:recv() end
                        ping:close()
                    end)
                    pinger:join()
                    echo:join()
                    collectgarbage()
                end
                function stream(n)
                    local ch = task.channel(64)
                    local producer = task.spawn(function()
                        for i = 1, n do ch:send(i) end
                        ch:close()
                    end)
                    local sum = 0
                    for v in ch:iter() do sum = sum + v end
                    producer:join()
                    collectgarbage()
                    return sum
                end
                function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
                function fib_in_task(n) return task.spawn(fib, n):join() end
                function sleep_many(n)
                    for i = 1, n do task.spawn(task.sleep, 1e9) end
                end
                "#,
            )
            .exec()
        })
        .unwrap()
}

/// Times `iters` units of work done by one request that does `per_batch` units per call.
fn per_unit(isle: &Isle, name: &'static str, iters: u64) -> Duration {
    let start = Instant::now();
    isle.call::<()>(name, iters as i64).unwrap();
    start.elapsed()
}

fn tasks(c: &mut Criterion) {
    let mut group = c.benchmark_group("tasks");
    let isle = isle();

    group.bench_function("spawn_join_empty", |b| {
        b.iter_custom(|iters| per_unit(&isle, "spawn_join", iters))
    });
    group.bench_function("ping_pong_rendezvous_per_round_trip", |b| {
        b.iter_custom(|iters| per_unit(&isle, "ping_pong", iters))
    });
    group.bench_function("stream_capacity_64_per_message", |b| {
        b.iter_custom(|iters| per_unit(&isle, "stream", iters))
    });

    // Spawn + join while 10 000 tasks sleep in the same request.
    let busy = Isle::builder()
        .task_library(TaskLibrary::new())
        .spawn(|_| Ok(()))
        .unwrap();
    let (tx, rx) = crossbeam_channel::bounded::<(u64, crossbeam_channel::Sender<Duration>)>(0);
    let holder = busy
        .exec(move |lua| {
            let (requests, ch) = host::request_channel::<i64, i64>(lua, 1)?;
            lua.globals().set("requests", ch)?;
            Ok(requests)
        })
        .unwrap();
    let serving = busy
        .spawn_eval::<()>(
            r#"
            for i = 1, 10000 do task.spawn(task.sleep, 1e9) end
            local f = function() end
            for req in requests do
                local n = req.value
                for i = 1, n do task.spawn(f):join() end
                collectgarbage()
                req:reply(n)
            end
            "#,
        )
        .unwrap();
    let driver = std::thread::spawn(move || {
        while let Ok((iters, done)) = rx.recv() {
            let start = Instant::now();
            holder
                .request_blocking(iters as i64, Duration::from_secs(600))
                .unwrap();
            done.send(start.elapsed()).unwrap();
        }
    });
    group.bench_function("spawn_join_empty_10k_alive", |b| {
        b.iter_custom(|iters| {
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            tx.send((iters, done_tx)).unwrap();
            done_rx.recv().unwrap()
        })
    });
    drop(tx);
    driver.join().unwrap();
    serving.wait().unwrap();

    // CPU-bound code in a task against raw mlua on this thread.
    let lua = Lua::new();
    lua.load("function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end")
        .exec()
        .unwrap();
    let fib: mlua_isle::mlua::Function = lua.globals().get("fib").unwrap();
    group.bench_function("raw_mlua/fib25", |b| {
        b.iter(|| black_box(fib.call::<i64>(25).unwrap()))
    });
    group.bench_function("isle/fib25_in_task", |b| {
        b.iter(|| black_box(isle.call::<i64>("fib_in_task", 25).unwrap()))
    });
    group.bench_function("isle/fib25_plain", |b| {
        b.iter(|| black_box(isle.call::<i64>("fib", 25).unwrap()))
    });
    group.finish();
}

fn host_requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_requests");
    let isle = Isle::builder()
        .task_library(TaskLibrary::new())
        .spawn(|_| Ok(()))
        .unwrap();
    let ask = isle
        .exec(|lua| {
            let (ask, ch) = host::request_channel::<i64, i64>(lua, 64)?;
            lua.globals().set("requests", ch)?;
            Ok(ask)
        })
        .unwrap();
    let serving = isle
        .spawn_eval::<()>("for req in requests do req:reply(req.value) end")
        .unwrap();
    group.bench_function("one_at_a_time", |b| {
        b.iter(|| {
            black_box(
                ask.request_blocking(black_box(7), Duration::from_secs(60))
                    .unwrap(),
            )
        })
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    group.bench_function("64_in_flight_per_request", |b| {
        b.iter_custom(|iters| {
            let ask = ask.clone();
            runtime.block_on(async move {
                let per_task = iters.div_ceil(64);
                let start = Instant::now();
                let mut handles = Vec::with_capacity(64);
                for _ in 0..64 {
                    let ask = ask.clone();
                    handles.push(tokio::spawn(async move {
                        for i in 0..per_task {
                            black_box(ask.request(i as i64).await.unwrap());
                        }
                    }));
                }
                for h in handles {
                    h.await.unwrap();
                }
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * 64) as f64)
            })
        })
    });
    group.finish();
    ask.close();
    serving.wait().unwrap();
}

/// Memory per sleeping task with 10 000 asleep: Lua heap and process heap, printed.
fn sleeping_memory(_c: &mut Criterion) {
    const N: usize = 10_000;
    let isle = isle();
    isle.eval::<()>("collectgarbage() collectgarbage()")
        .unwrap();
    // The request must stay open for the tasks to stay alive: measure inside it.
    let (lua_kib, process_bytes) = isle
        .exec(|lua| {
            lua.gc_collect()?;
            lua.gc_collect()?;
            let lua_before = lua.used_memory();
            let process_before = LIVE.load(Ordering::SeqCst);
            lua.load(format!("sleep_many({N})")).exec()?;
            lua.gc_collect()?;
            lua.gc_collect()?;
            let lua_after = lua.used_memory();
            let process_after = LIVE.load(Ordering::SeqCst);
            Ok((
                (lua_after - lua_before) as f64 / N as f64 / 1024.0,
                (process_after - process_before) as f64 / N as f64,
            ))
        })
        .unwrap();
    println!(
        "tasks/sleeping_memory: Lua heap {lua_kib:.2} KiB per task, process heap {:.2} KiB per task ({N} asleep)",
        process_bytes / 1024.0
    );
}

criterion_group!(benches, sleeping_memory, tasks, host_requests);
criterion_main!(benches);
