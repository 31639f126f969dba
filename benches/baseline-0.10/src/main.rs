//! mlua-isle 0.10 running the Lua workloads of `benches/tasks.rs`: spawn + join of an empty
//! task, ping-pong over a rendezvous channel, a one-way stream over a capacity-64 channel.
//! Prints the median time per unit over several batches, each ending with a full collection.
//!
//! 0.10's `recv` returns `value, ok` and its channels have no iterator, so its loops test
//! `ok` where ours iterate; the work per message is the same.

use std::time::Instant;

use mlua_isle::runtime::{Config, Vm};
use mlua_isle::AsyncIsle;

const WORKLOADS: &str = r#"
    function spawn_join(n)
        local f = function() end
        for i = 1, n do task.spawn(f):join() end
        collectgarbage()
    end
    function ping_pong(n)
        local ping, pong = task.channel(0), task.channel(0)
        local echo = task.spawn(function()
            while true do
                local v, ok = ping:recv()
                if not ok then return end
                pong:send(v)
            end
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
        while true do
            local v, ok = ch:recv()
            if not ok then break end
            sum = sum + v
        end
        producer:join()
        collectgarbage()
        return sum
    end
"#;

const BATCHES: usize = 11;
const PER_BATCH: i64 = 20_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (isle, driver) = AsyncIsle::builder()
        .spawn(|lua| {
            let vm = Vm::attach(lua, Config::default())?;
            lua.globals().set("task", vm.task_lib()?)?;
            lua.load(WORKLOADS).exec()?;
            Ok(())
        })
        .await
        .expect("mlua-isle 0.10 starts");
    for name in ["spawn_join", "ping_pong", "stream"] {
        let mut per_unit = Vec::with_capacity(BATCHES);
        for _ in 0..BATCHES {
            let start = Instant::now();
            isle.coroutine_call::<_, ()>(name, PER_BATCH)
                .await
                .expect("the workload runs");
            per_unit.push(start.elapsed().as_secs_f64() * 1e9 / PER_BATCH as f64);
        }
        per_unit.sort_by(f64::total_cmp);
        println!(
            "{name}: median {:.0} ns per unit (range {:.0}–{:.0} ns)",
            per_unit[BATCHES / 2],
            per_unit[0],
            per_unit[BATCHES - 1]
        );
    }
    driver.shutdown().await.expect("mlua-isle 0.10 shuts down");
}
