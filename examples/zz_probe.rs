use mlua_isle::{Isle, TaskLibrary};
use std::time::Instant;
fn main() {
    let code = r#"
        local co = coroutine.create(function() while true do coroutine.yield() end end)
        local t0 = os.clock()
        for i = 1, 1000000 do coroutine.resume(co) end
        return (os.clock() - t0) * 1e3
    "#;
    let lua = mlua::Lua::new();
    let raw: f64 = lua.load(code).eval().unwrap();
    let isle = Isle::builder().task_library(TaskLibrary::new().time_slice(std::env::var("NOSLICE").ok().map(|_| None).unwrap_or(Some(TaskLibrary::DEFAULT_TIME_SLICE)))).spawn(|_| Ok(())).unwrap();
    let wrapped: f64 = isle.eval(code).unwrap();
    println!("resume+yield: raw {raw:.1} ns, isle {wrapped:.1} ns");
    for (name, code) in [("ping_pong_tasks", r#"
                    local n = 200000
                    local ping, pong = task.channel(0), task.channel(0)
                    local t0 = os.clock()
                    local a = task.spawn(function() for i = 1, n do ping:send(i) pong:recv() end ping:close() end)
                    local b = task.spawn(function() for v in ping:iter() do pong:send(v) end end)
                    a:join() b:join()
                    return (os.clock() - t0) / n * 1e9"#),
        ("ping_pong", r#"
                    local n = 200000
                    local ping, pong = task.channel(0), task.channel(0)
                    local echo = task.spawn(function()
                        for v in ping:iter() do pong:send(v) end
                    end)
                    local t0 = os.clock()
                    for i = 1, n do ping:send(i) pong:recv() end
                    local t = os.clock() - t0
                    ping:close()
                    echo:join()
                    return t / n * 1e9"#),
        ("spawn_join", r#"
                    local n = 200000
                    local f = function() end
                    local t0 = os.clock()
                    for i = 1, n do task.spawn(f):join() end
                    return (os.clock() - t0) / n * 1e9"#),
        ("stream", r#"
                    local n = 200000
                    local ch = task.channel(64)
                    local t0 = os.clock()
                    local producer = task.spawn(function()
                        for i = 1, n do ch:send(i) end
                        ch:close()
                    end)
                    for v in ch:iter() do end
                    return (os.clock() - t0) / n * 1e9"#),
        ("mem", r#"
                    collectgarbage() collectgarbage()
                    local before = collectgarbage("count")
                    for i = 1, 10000 do task.spawn(task.sleep, 1e9) end
                    collectgarbage() collectgarbage()
                    return (collectgarbage("count") - before) / 10000 * 1024"#)] {
        let t = Instant::now();
        let v: f64 = isle.eval(code).unwrap();
        println!("{name}: {v:.0} ({:?})", t.elapsed());
    }
}
