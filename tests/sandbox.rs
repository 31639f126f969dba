//! The sandbox preset and isolation between requests: what scripts can no longer reach, what
//! they can no longer change, and what the next request no longer sees.

mod common;

use mlua_isle::{Isle, IsleError, Isolation, PrintSink, Sandbox};

fn sandboxed() -> Isle {
    Isle::builder()
        .sandboxed()
        .spawn(|lua| {
            lua.load("config = { level = 3, nested = { deep = 1 } } function host_add(a, b) return a + b end")
                .exec()
        })
        .unwrap()
}

fn is_blocked(isle: &Isle, code: &str) -> bool {
    isle.eval::<()>(code).is_err()
}

#[test]
fn dangerous_globals_are_gone() {
    let isle = sandboxed();
    for name in [
        "io",
        "dofile",
        "loadfile",
        "require",
        "package",
        "module",
        "debug",
        "loadstring",
        "getfenv",
        "setfenv",
        "jit",
    ] {
        assert!(
            isle.eval::<bool>(&format!("return {name} == nil")).unwrap(),
            "{name} is reachable"
        );
    }
    assert!(isle.eval::<bool>("return newproxy == nil").unwrap());
    assert!(isle.eval::<bool>("return string.dump == nil").unwrap());
}

#[test]
fn os_keeps_only_time_functions() {
    let isle = sandboxed();
    let names: Vec<String> = isle
        .eval::<Vec<String>>(
            "local t = {} for k in pairs(os) do t[#t + 1] = k end table.sort(t) return t",
        )
        .unwrap();
    #[cfg(not(any(feature = "lua51", feature = "luajit")))]
    assert_eq!(names, ["clock", "date", "difftime", "time"]);
    let _ = names;
    for name in [
        "execute",
        "exit",
        "remove",
        "rename",
        "getenv",
        "tmpname",
        "setlocale",
    ] {
        assert!(isle
            .eval::<bool>(&format!("return os.{name} == nil"))
            .unwrap());
    }
    assert!(isle.eval::<f64>("return os.clock()").unwrap() >= 0.0);
}

#[test]
fn load_reads_text_only_and_needs_an_environment() {
    let isle = sandboxed();
    assert_eq!(
        isle.eval::<i64>("return load('return x', 'c', 't', { x = 4 })()")
            .unwrap(),
        4
    );
    assert!(is_blocked(&isle, "return load('return 1')"));
    assert!(is_blocked(&isle, "return load('return 1', 'c', 't')"));
    // A loaded chunk sees only the environment it was given.
    assert!(isle
        .eval::<bool>("return load('return config', 'c', 't', {})() == nil")
        .unwrap());
    // Binary chunks are refused: the mode must allow text, and text is all it reads.
    let (f, msg) = isle
        .eval::<(Option<bool>, String)>("return load('x', 'c', 'b', {})")
        .unwrap();
    assert!(f.is_none() && msg.contains("mode"), "{msg}");
    let (f, msg) = isle
        .eval::<(Option<bool>, String)>("return load('\\27Lua', 'c', 'bt', {})")
        .unwrap();
    assert!(f.is_none(), "{msg}");
    // A reader function works as in Lua 5.2+.
    assert_eq!(
        isle.eval::<i64>(
            "local parts, i = { 'return ', '4', '0' }, 0 \
             return load(function() i = i + 1 return parts[i] end, 'r', 't', {})()"
        )
        .unwrap(),
        40
    );
    // A syntax error is returned, not raised.
    let (f, msg) = isle
        .eval::<(Option<bool>, String)>("return load('return +', 'c', 't', {})")
        .unwrap();
    assert!(f.is_none() && !msg.is_empty());
}

#[test]
fn finalizers_cannot_be_set() {
    let isle = sandboxed();
    assert!(is_blocked(
        &isle,
        "setmetatable({}, { __gc = function() end })"
    ));
    // A placeholder set before the function is refused as well.
    assert!(is_blocked(
        &isle,
        "local mt = { __gc = true } setmetatable({}, mt)"
    ));
    assert!(is_blocked(&isle, "setmetatable({}, { __gc = false })"));
    // Other metatables still work.
    assert_eq!(
        isle.eval::<i64>("return setmetatable({}, { __index = function() return 7 end }).x")
            .unwrap(),
        7
    );
}

#[test]
fn collectgarbage_cannot_stop_or_retune_the_collector() {
    let isle = sandboxed();
    for option in [
        "stop",
        "restart",
        "setpause",
        "setstepmul",
        "incremental",
        "generational",
    ] {
        assert!(
            is_blocked(&isle, &format!("collectgarbage('{option}')")),
            "{option} allowed"
        );
    }
    assert!(isle.eval::<f64>("return collectgarbage('count')").unwrap() > 0.0);
    // (Luau's `collectgarbage` knows only "count".)
    #[cfg(not(feature = "luau"))]
    isle.eval::<()>("collectgarbage('collect')").unwrap();
}

#[test]
fn libraries_and_the_string_metatable_are_read_only() {
    let isle = sandboxed();
    for code in [
        "string.rep = nil",
        "string.evil = 1",
        "math.pi = 3",
        "table.insert = print",
        "rawset(string, 'rep', print)",
        "table.insert(string, 1)",
        "setmetatable(string, nil)",
        "getmetatable('').__index = {}",
        "os.time = nil",
        "coroutine.wrap = nil",
    ] {
        assert!(is_blocked(&isle, code), "allowed: {code}");
    }
    assert_eq!(isle.eval::<String>("return ('ab'):rep(2)").unwrap(), "abab");
    assert_eq!(
        isle.eval::<String>("return string.rep('x', 3)").unwrap(),
        "xxx"
    );
    // Out of reach where Luau's read-only tables are not there to protect it.
    #[cfg(not(feature = "luau"))]
    assert!(isle
        .eval::<bool>("return getmetatable('') == false")
        .unwrap());
}

#[test]
fn host_globals_stay_visible_and_protected() {
    let isle = sandboxed();
    assert_eq!(isle.eval::<i64>("return host_add(2, 3)").unwrap(), 5);
    assert_eq!(isle.eval::<i64>("return config.level").unwrap(), 3);
    assert!(is_blocked(&isle, "config.level = 9"));
    assert!(is_blocked(&isle, "config.nested.deep = 9"));
    assert!(is_blocked(&isle, "rawset(config, 'level', 9)"));
    // Replacing a host global affects only the request that does it.
    isle.eval::<()>("host_add = nil config = nil").unwrap();
    assert_eq!(isle.eval::<i64>("return host_add(1, 1)").unwrap(), 2);
    assert_eq!(isle.eval::<i64>("return config.nested.deep").unwrap(), 1);
}

#[test]
fn nothing_a_request_leaves_reaches_the_next() {
    let isle = Isle::builder()
        .isolation(Isolation::FreshEnvironment)
        .spawn(|_| Ok(()))
        .unwrap();
    isle.eval::<()>("leaked = 1; _G.also = 2; rawset(_G, 'raw', 3)")
        .unwrap();
    assert!(isle
        .eval::<bool>("return leaked == nil and also == nil and raw == nil")
        .unwrap());
    // `_G` is the request's own environment, and its metatable is out of reach.
    assert!(isle
        .eval::<bool>("return _G ~= nil and _G._G == _G")
        .unwrap());
    assert!(is_blocked(&isle, "setmetatable(_G, {})"));
    assert!(isle
        .eval::<bool>("return getmetatable(_G) == false")
        .unwrap());
    // Many globals: the environment is replaced, and still starts empty.
    isle.eval::<()>("for i = 1, 1000 do _G['g' .. i] = i end")
        .unwrap();
    assert!(isle
        .eval::<bool>("return g1 == nil and g1000 == nil")
        .unwrap());
    // The same cached chunk runs in a clean environment each time.
    for _ in 0..3 {
        assert_eq!(
            isle.eval::<i64>("counter = (counter or 0) + 1 return counter")
                .unwrap(),
            1
        );
    }
}

#[test]
fn gc_settings_a_request_changed_are_restored() {
    let isle = Isle::builder()
        .isolation(Isolation::FreshEnvironment)
        .spawn(|_| Ok(()))
        .unwrap();
    isle.eval::<()>("collectgarbage('stop')").unwrap();
    #[cfg(not(any(feature = "lua51", feature = "luajit", feature = "luau")))]
    assert!(isle
        .eval::<bool>("return collectgarbage('isrunning')")
        .unwrap());
    // Generational mode and tuning are put back too.
    #[cfg(feature = "lua54")]
    {
        isle.eval::<()>("collectgarbage('generational')").unwrap();
        assert_eq!(
            isle.eval::<String>("return collectgarbage('incremental')")
                .unwrap(),
            "incremental"
        );
    }
}

#[test]
fn print_goes_where_the_host_routes_it() {
    // Discarded by default; `__tostring` still runs as with Lua's own print.
    let isle = sandboxed();
    isle.eval::<()>("print('x', 1, nil, true)").unwrap();
    assert!(is_blocked(
        &isle,
        "print(setmetatable({}, { __tostring = function() error('boom') end }))"
    ));
    // Collected per request, capped.
    let isle = Isle::builder()
        .sandbox(Sandbox::new().print(PrintSink::collect(16)))
        .spawn(|_| Ok(()))
        .unwrap();
    let out = isle
        .exec(|lua| {
            lua.load("print('a', 1) print(string.rep('y', 100)) print('b')")
                .exec()?;
            Ok(mlua_isle::take_output(lua))
        })
        .unwrap();
    assert_eq!(out, "a\t1\nb\n");
    isle.eval::<()>("print('left over')").unwrap();
    assert_eq!(
        isle.exec(|lua| Ok(mlua_isle::take_output(lua))).unwrap(),
        ""
    );
}

#[test]
fn each_piece_can_be_given_back() {
    let isle = Isle::builder()
        .sandbox(
            Sandbox::new()
                .full_os(true)
                .string_dump(true)
                .finalizers(true)
                .gc_control(true)
                .load_needs_env(false)
                .read_only_libraries(false),
        )
        .spawn(|_| Ok(()))
        .unwrap();
    #[cfg(not(feature = "luau"))]
    assert!(isle.eval::<bool>("return os.getenv ~= nil").unwrap());
    #[cfg(not(feature = "luau"))]
    assert!(isle.eval::<bool>("return string.dump ~= nil").unwrap());
    isle.eval::<()>("setmetatable({}, { __gc = function() end })")
        .unwrap();
    isle.eval::<()>("collectgarbage('stop') collectgarbage('restart')")
        .unwrap();
    assert_eq!(isle.eval::<i64>("return load('return 5')()").unwrap(), 5);
    isle.eval::<()>("string.custom = 1").unwrap();
    assert_eq!(isle.eval::<i64>("return string.custom").unwrap(), 1);
}

#[test]
fn sandboxed_sets_limits_for_untrusted_code() {
    let isle = sandboxed();
    assert!(matches!(
        isle.eval::<()>("while true do end"),
        Err(IsleError::Timeout)
    ));
    assert!(matches!(
        isle.eval::<()>("local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(1024) .. i end"),
        Err(IsleError::Lua(_)) | Err(IsleError::Timeout)
    ));
    assert_eq!(isle.eval::<i64>("return 1 + 1").unwrap(), 2);
}

#[test]
fn a_fresh_vm_needs_a_pool() {
    let err = Isle::builder()
        .isolation(Isolation::FreshVm)
        .spawn(|_| Ok(()))
        .unwrap_err();
    assert!(matches!(err, IsleError::Config(_)));
}

#[test]
fn a_pool_can_give_every_request_a_fresh_vm() {
    let pool = mlua_isle::IslePool::builder()
        .size(1)
        .isolation(Isolation::FreshVm)
        .spawn(|lua| lua.globals().set("base", 1))
        .unwrap();
    for _ in 0..5 {
        assert!(pool
            .eval::<bool>(
                "local seen = marker ~= nil; marker = true; string.rep = nil; return not seen"
            )
            .unwrap());
        assert_eq!(pool.eval::<i64>("base").unwrap(), 1);
    }
    assert!(pool.stats().recycled.total() >= 4);
}

#[test]
fn a_sandboxed_pool_isolates_requests() {
    let pool = mlua_isle::IslePool::builder()
        .size(2)
        .sandboxed()
        .spawn(|_| Ok(()))
        .unwrap();
    for _ in 0..10 {
        assert!(pool
            .eval::<bool>("local fresh = x == nil; x = 1; return fresh")
            .unwrap());
    }
    assert!(pool.eval::<bool>("io == nil and debug == nil").unwrap());
}

#[test]
fn iterating_a_read_only_table_does_not_hand_out_its_contents() {
    let isle = sandboxed();
    // `pairs` must not return the hidden table as the iterator's state.
    assert!(
        is_blocked(
            &isle,
            "local _, state = pairs(string) if type(state) == 'table' then state.rep = nil end \
         return string.rep('a', 2) == 'aa' or error('tampered')"
        ) || isle.eval::<String>("return string.rep('a', 2)").unwrap() == "aa"
    );
    assert_eq!(
        isle.eval::<String>("return string.rep('a', 2)").unwrap(),
        "aa"
    );
    #[cfg(not(any(feature = "lua51", feature = "luajit")))]
    assert!(isle
        .eval::<bool>("local n = 0 for k, v in pairs(string) do n = n + 1 end return n > 10")
        .unwrap());
}

#[test]
fn removing_g_from_the_environment_does_not_reveal_the_real_globals() {
    let isle = sandboxed();
    assert!(isle.eval::<bool>("_G = nil return _G == nil").unwrap());
    isle.eval::<()>("rawset(_ENV or _G or {}, '_G', nil) local g = _G if g then g.leak = 1 end")
        .unwrap();
    assert!(isle.eval::<bool>("return leak == nil").unwrap());
    // Host functions still see the real globals through Rust.
    assert_eq!(isle.eval::<i64>("return host_add(1, 2)").unwrap(), 3);
}

#[test]
fn memory_a_request_hoarded_does_not_starve_the_next() {
    let isle = Isle::builder()
        .isolation(Isolation::FreshEnvironment)
        .memory_limit(16 << 20)
        .spawn(|_| Ok(()))
        .unwrap();
    let hoard = "hoard = {} for i = 1, 80 do hoard[i] = string.rep(tostring(i), 128 * 1024 // #tostring(i)) end";
    let hoard = hoard.replace(
        "//",
        if cfg!(any(feature = "lua51", feature = "luajit", feature = "luau")) {
            "/"
        } else {
            "//"
        },
    );
    for _ in 0..3 {
        isle.eval::<()>(hoard.as_str()).unwrap();
    }
}

/// A 20 MiB allocation: fits a fresh sandboxed isle (64 MiB limit) with room to spare.
const BIG: &str = "local s = string.rep('x', 20 * 2^20) return #s";

#[test]
fn a_request_that_fills_memory_still_leaves_nothing_to_the_next() {
    let isle = sandboxed();
    let _ = isle.eval::<()>(
        r#"
for i = 1, 70 do _G["k" .. i] = i end
tostring = function() return "replaced" end
local hold = {} for i = 1, 4096 do hold[i] = false end
k1 = hold
local n, size = 0, 2^22
while size >= 1 and n < 4096 do
  local ok, s = pcall(string.rep, "y", size, "" .. n)
  if ok then n = n + 1; hold[n] = s else size = math.floor(size / 2) end
end"#,
    );
    assert_eq!(isle.eval::<String>("return tostring(42)").unwrap(), "42");
    assert!(isle.eval::<bool>("return k1 == nil and k2 == nil").unwrap());
    isle.eval::<i64>(BIG).unwrap();
}

#[test]
fn an_environment_a_request_grew_does_not_keep_its_memory() {
    let isle = sandboxed();
    isle.eval::<i64>(BIG).unwrap();
    isle.eval::<()>("for i = 1, 2^21 do _G[i] = true end for i = 1, 2^21 do _G[i] = nil end")
        .unwrap();
    for _ in 0..3 {
        isle.eval::<i64>(BIG).unwrap();
    }
}

#[test]
fn large_chunks_are_not_kept_by_the_cache() {
    let isle = sandboxed();
    for c in ["a", "b"] {
        let code = format!("return #\"{}\"", c.repeat(10 << 20));
        assert_eq!(isle.eval::<i64>(code.as_str()).unwrap(), 10 << 20);
    }
    isle.eval::<i64>("local s = string.rep('x', 12 * 2^20) return #s")
        .unwrap();
    // Messages still name a chunk by its first line, as Lua does.
    let err = isle
        .eval::<()>("local x = nil + 1\n-- more")
        .unwrap_err()
        .to_string();
    assert!(err.contains("local x = nil + 1"), "{err}");
}

#[test]
fn a_collector_step_cannot_put_the_collector_to_sleep() {
    let isle = sandboxed();
    assert!(is_blocked(&isle, "collectgarbage('step', -2^31)"));
    // (Luau's `collectgarbage` knows only "count".)
    if cfg!(feature = "luau") {
        return;
    }
    isle.eval::<()>("collectgarbage('step')").unwrap();
    isle.eval::<()>("collectgarbage('step', 0)").unwrap();
    // Without the sandbox, a fresh environment puts the collector back after such a step.
    let isle = Isle::builder()
        .isolation(Isolation::FreshEnvironment)
        .spawn(|_| Ok(()))
        .unwrap();
    isle.eval::<()>("collectgarbage('step', -2^31)").unwrap();
    let mut highest = 0.0f64;
    for _ in 0..5 {
        let kb: f64 = isle
            .eval(
                "local t = {} for i = 1, 200000 do t[i] = {} end t = nil \
                 collectgarbage('collect') return collectgarbage('count')",
            )
            .unwrap();
        highest = highest.max(kb);
    }
    assert!(highest < 10_000.0, "{highest} KiB in use");
}

#[test]
fn a_random_seed_does_not_carry_over() {
    let isle = sandboxed();
    let seeded: Vec<i64> = isle
        .eval("math.randomseed(7) local t = {} for i = 1, 4 do t[i] = math.random(1, 1000000) end return t")
        .unwrap();
    isle.eval::<()>("math.randomseed(7)").unwrap();
    let next: Vec<i64> = isle
        .eval("local t = {} for i = 1, 4 do t[i] = math.random(1, 1000000) end return t")
        .unwrap();
    assert_ne!(seeded, next);
}

#[test]
fn tables_init_leaves_are_read_only_through_keys_libraries_and_replacements() {
    let isle = Isle::builder()
        .sandboxed()
        .spawn(|lua| {
            lua.load(
                "os = { time = os.time } \
                 string.helpers = { trim = function(s) return s end } \
                 lookup = { [{ role = 'user' }] = true }",
            )
            .exec()
        })
        .unwrap();
    assert!(is_blocked(&isle, "os.time = function() return 0 end"));
    assert!(isle.eval::<i64>("return os.time()").unwrap() > 0);
    assert!(is_blocked(
        &isle,
        "string.helpers.trim = function() return 'hijacked' end"
    ));
    assert_eq!(
        isle.eval::<String>("return string.helpers.trim('x')")
            .unwrap(),
        "x"
    );
    #[cfg(not(any(feature = "lua51", feature = "luajit")))]
    {
        assert!(is_blocked(
            &isle,
            "for k in pairs(lookup) do k.role = 'admin' end"
        ));
        assert_eq!(
            isle.eval::<String>("for k in pairs(lookup) do return k.role end")
                .unwrap(),
            "user"
        );
    }
}

#[test]
fn a_fresh_vm_pool_hands_each_checkout_a_fresh_vm() {
    let pool = mlua_isle::IslePool::builder()
        .size(1)
        .isolation(Isolation::FreshVm)
        .spawn(|_| Ok(()))
        .unwrap();
    for _ in 0..3 {
        let guard = pool.checkout().unwrap();
        assert!(guard.eval::<bool>("return mark == nil").unwrap());
        guard.eval::<()>("mark = true").unwrap();
        drop(guard);
    }
}

#[test]
fn a_closing_fresh_vm_pool_runs_nothing_queued_on_a_used_vm() {
    use std::sync::{Arc, Mutex};
    common::within_hang_guard(|| {
        let (release, released) = crossbeam_channel::bounded::<()>(1);
        let (started, running) = crossbeam_channel::bounded::<()>(1);
        let released = Arc::new(Mutex::new(released));
        let pool = mlua_isle::IslePool::builder()
            .size(1)
            .isolation(Isolation::FreshVm)
            .spawn(move |lua| {
                let released = released.clone();
                let started = started.clone();
                let block = lua.create_function(move |_, ()| {
                    let _ = started.send(());
                    let _ = released.lock().unwrap().recv();
                    Ok(())
                })?;
                lua.globals().set("block", block)
            })
            .unwrap();
        let first = pool.spawn_eval::<()>("block() leak = 'first'").unwrap();
        running.recv().unwrap();
        let queued: Vec<_> = (0..2)
            .map(|_| {
                pool.spawn_eval::<Option<String>>("local seen = leak leak = 'queued' return seen")
                    .unwrap()
            })
            .collect();
        let closing = std::thread::spawn(move || pool.shutdown());
        // Queued work resolves as the pool winds down, before the running request ends.
        let mut queued = queued.into_iter();
        let next = queued.next().unwrap();
        assert!(matches!(next.wait(), Err(IsleError::Shutdown)));
        release.send(()).unwrap();
        first.wait().unwrap();
        for task in queued {
            assert!(matches!(task.wait(), Err(IsleError::Shutdown)));
        }
        closing.join().unwrap().unwrap();
    });
}

#[cfg(any(feature = "luajit", feature = "luajit52"))]
#[test]
fn a_factory_vm_loses_ffi_in_the_sandbox() {
    use mlua::{Lua, LuaOptions, StdLib};
    let isle = Isle::builder()
        .factory(|| {
            // SAFETY: a VM with every library, to check that the sandbox removes `ffi`; no
            // script here uses it.
            unsafe { Ok(Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new())) }
        })
        .sandboxed()
        .spawn(|_| Ok(()))
        .unwrap();
    assert!(isle
        .eval::<bool>("return ffi == nil and jit == nil")
        .unwrap());
}

#[test]
fn the_memory_policy_sees_what_a_fresh_environment_leaves_after_cleanup() {
    let pool = mlua_isle::IslePool::builder()
        .size(1)
        .isle(Isle::builder().memory_limit(64 << 20))
        .isolation(Isolation::FreshEnvironment)
        .recycle(mlua_isle::Recycle::new().memory_high_water(8 << 20))
        .spawn(|_| Ok(()))
        .unwrap();
    for _ in 0..3 {
        pool.eval::<()>("big = {} for i = 1, 300000 do big[i] = {i} end")
            .unwrap();
    }
    assert_eq!(pool.stats().recycled.memory, 0, "{:?}", pool.stats());
}

/// Randomized: a fresh-VM pool shut down while its member finishes a request, with many
/// requests queued: none of them may run on the VM the first one used.
#[test]
fn a_fresh_vm_pool_shut_down_mid_request_never_reuses_a_vm() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    common::within_hang_guard(|| {
        for _ in 0..10 {
            let pool = mlua_isle::IslePool::builder()
                .size(1)
                .queue_capacity(512)
                .isolation(Isolation::FreshVm)
                .spawn(|_| Ok(()))
                .unwrap();
            let started = Arc::new(AtomicBool::new(false));
            let go = Arc::new(AtomicBool::new(false));
            let (s, g) = (started.clone(), go.clone());
            let first = pool
                .spawn_exec(move |lua| {
                    lua.set_named_registry_value("used", true)?;
                    s.store(true, Ordering::SeqCst);
                    while !g.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                    Ok(())
                })
                .unwrap();
            while !started.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            let rest: Vec<_> = (0..300)
                .map(|_| {
                    pool.spawn_exec(|lua| {
                        Ok(lua.named_registry_value::<bool>("used").unwrap_or(false))
                    })
                    .unwrap()
                })
                .collect();
            go.store(true, Ordering::SeqCst);
            pool.shutdown().unwrap();
            first.wait().unwrap();
            for task in rest {
                assert!(!matches!(task.wait(), Ok(true)), "ran on a used VM");
            }
        }
    });
}

/// A request that leaves more than a quarter of the memory limit in its fresh environment,
/// plus an object whose finalizer calls `hold()`: the collection after it runs that finalizer.
/// (Lua 5.1 and LuaJIT run finalizers of userdata only; Luau none set from Lua.) A few large
/// strings rather than many small ones: the code is done in well under a millisecond, even
/// unoptimized on a loaded machine, long before the request's deadline.
#[cfg(not(feature = "luau"))]
const CLEANUP_RUNS_A_FINALIZER: &str = if cfg!(any(feature = "lua51", feature = "luajit")) {
    r#"
    big = {} for i = 1, 48 do big[i] = string.rep("x", 65536) .. i end
    fin = newproxy(true)
    getmetatable(fin).__gc = function() hold() end
    return 1
"#
} else {
    r#"
    big = {} for i = 1, 48 do big[i] = string.rep("x", 65536) .. i end
    fin = setmetatable({}, { __gc = function() hold() end })
    return 1
"#
};

/// The deadline of the requests that run [`CLEANUP_RUNS_A_FINALIZER`], and the grace period
/// of their isle.
#[cfg(not(feature = "luau"))]
const CLEANUP_DEADLINE: std::time::Duration = std::time::Duration::from_millis(300);
#[cfg(not(feature = "luau"))]
const CLEANUP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until the finalizer of [`CLEANUP_RUNS_A_FINALIZER`] has been entered; fails (rather
/// than hangs) if it never is, with what became of the request.
#[cfg(not(feature = "luau"))]
fn wait_for_the_finalizer<T: std::fmt::Debug>(
    entering: &crossbeam_channel::Receiver<()>,
    task: mlua_isle::Task<T>,
) -> mlua_isle::Task<T> {
    if entering.recv_timeout(common::HANG / 2).is_err() {
        panic!(
            "the cleanup's finalizer never ran; the request: {:?}",
            task.wait()
        );
    }
    task
}

#[cfg(not(feature = "luau"))]
fn isle_whose_finalizers_call(hold: impl Fn() + Send + Sync + 'static) -> Isle {
    let hold = std::sync::Arc::new(hold);
    Isle::builder()
        .memory_limit(8 << 20)
        .isolation(Isolation::FreshEnvironment)
        .grace_period(CLEANUP_GRACE)
        .spawn(move |lua| {
            let hold = hold.clone();
            let f = lua.create_function(move |_, ()| {
                hold();
                Ok(())
            })?;
            lua.globals().set("hold", f)
        })
        .unwrap()
}

/// The outcome is what the code did by its deadline: a slow finalizer in the cleanup after
/// it (past the deadline, within the grace period) does not turn it into a timeout.
#[cfg(not(feature = "luau"))]
#[test]
fn cleanup_after_a_request_does_not_change_its_outcome() {
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};
    common::within_hang_guard(|| {
        let (entered, entering) = crossbeam_channel::bounded::<()>(1);
        let deadline = Arc::new(OnceLock::<Instant>::new());
        let isle = isle_whose_finalizers_call({
            let deadline = deadline.clone();
            move || {
                let _ = entered.try_send(());
                // Past the request's deadline, well within the grace period.
                let until = *deadline.get().expect("set before the request") + CLEANUP_GRACE / 4;
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
        });
        let _ = deadline.set(Instant::now() + CLEANUP_DEADLINE + Duration::from_millis(1));
        let task = isle
            .request()
            .timeout(CLEANUP_DEADLINE)
            .spawn_eval::<i64>(CLEANUP_RUNS_A_FINALIZER)
            .unwrap();
        let got = wait_for_the_finalizer(&entering, task).wait();
        assert!(matches!(got, Ok(1)), "{got:?}");
    });
}

/// A finalizer that never returns in that cleanup ends in a hard stop that resolves the
/// request, as one run by the request itself would.
#[cfg(not(feature = "luau"))]
#[test]
fn a_stuck_cleanup_still_resolves_its_request() {
    use std::sync::Mutex;
    common::within_hang_guard(|| {
        let (entered, entering) = crossbeam_channel::bounded::<()>(1);
        let (release, released) = crossbeam_channel::bounded::<()>(1);
        let released = Mutex::new(released);
        let isle = isle_whose_finalizers_call(move || {
            let _ = entered.try_send(());
            let _ = released.lock().unwrap().recv();
        });
        let task = isle
            .request()
            .timeout(CLEANUP_DEADLINE)
            .spawn_eval::<i64>(CLEANUP_RUNS_A_FINALIZER)
            .unwrap();
        let task = wait_for_the_finalizer(&entering, task);
        assert!(matches!(task.wait(), Err(IsleError::Timeout)));
        let _ = isle.shutdown_timeout(std::time::Duration::from_millis(20));
        release.send(()).unwrap();
    });
}

#[test]
fn collecting_what_a_stopped_request_left_is_not_a_hard_stop() {
    common::within_hang_guard(|| {
        // A sandboxed request fills the heap with small strings, then loops until cancelled.
        // The collection that follows (the sandbox starts over when much memory is in use)
        // takes far longer than the short grace period; no script code runs in it (scripts
        // cannot set finalizers), so it is no reason to give up on the isle.
        let (started_tx, started) = std::sync::mpsc::channel();
        let isle = Isle::builder()
            .sandboxed()
            .memory_limit(256 << 20)
            .timeout(std::time::Duration::from_secs(60))
            .grace_period(std::time::Duration::from_millis(20))
            .spawn(move |lua| {
                let started_tx = std::sync::Mutex::new(started_tx);
                let started = lua.create_function(move |_, ()| {
                    let _ = started_tx.lock().unwrap().send(());
                    Ok(())
                })?;
                lua.globals().set("started", started)
            })
            .unwrap();
        let task = isle
            .spawn_eval::<()>(
                "local t = {} for i = 1, 1e6 do t['k' .. i] = true end
                 started()
                 while true do end",
            )
            .unwrap();
        started.recv().unwrap();
        task.cancel();
        assert!(matches!(task.wait(), Err(IsleError::Cancelled)));
        assert!(isle.is_alive());
        assert_eq!(isle.eval::<i64>("3").unwrap(), 3);
    });
}
