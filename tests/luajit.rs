//! LuaJIT: the JIT compiler is off unless the builder turns it on, because hooks do not run in
//! compiled code.
#![cfg(any(feature = "luajit", feature = "luajit52"))]

mod common;

use common::*;
use mlua_isle::Isle;

#[test]
fn the_compiler_is_off_by_default_and_cannot_be_turned_on() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    assert!(!isle.eval::<bool>("jit.status()").unwrap());
    let err = isle.eval::<()>("jit.on()").unwrap_err();
    assert!(
        err.as_lua().unwrap().message().contains("IsleBuilder::jit"),
        "{err}"
    );
    assert!(!isle.eval::<bool>("jit.status()").unwrap());
}

#[test]
fn a_hot_loop_stays_cancellable_with_the_compiler_off() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        // Hot enough to be compiled many times over if the compiler were on.
        let task = isle
            .spawn_eval::<()>(
                "for i = 1, 1000 do end started() local n = 0 while true do n = n + 1 end",
            )
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
    });
}

#[test]
fn the_builder_can_turn_the_compiler_on() {
    let isle = Isle::builder().jit(true).spawn(|_| Ok(())).unwrap();
    assert!(isle.eval::<bool>("jit.status()").unwrap());
    // Trusted, finite code runs compiled.
    let n: i64 = isle
        .eval("local s = 0 for i = 1, 1000000 do s = s + i % 7 end return s")
        .unwrap();
    assert_eq!(n, (1..=1_000_000i64).map(|i| i % 7).sum::<i64>());
}

#[test]
fn resumes_nested_without_end_fail_instead_of_overflowing_the_stack() {
    let isle = Isle::spawn(|_| Ok(())).unwrap();
    let deepest: String = isle
        .eval(
            "local deepest
             local function again()
               local ok, err = coroutine.resume(coroutine.create(again))
               if not ok and not deepest then deepest = err end
             end
             again()
             return tostring(deepest)",
        )
        .unwrap();
    assert!(deepest.contains("C stack overflow"), "{deepest}");
    assert_eq!(isle.eval::<i64>("1").unwrap(), 1);
}

/// A recursion through `string.gsub` would end with the Lua stack after about 8 000 levels,
/// and LuaJIT takes about a second to unwind that error, with no hook running. An isle stops
/// it at 16 MiB of stack, about 1 900 levels, and every level below stays usable.
#[test]
fn recursion_through_gsub_stops_long_before_the_lua_stack_is_full() {
    within_hang_guard(|| {
        let isle = Isle::spawn(|_| Ok(())).unwrap();
        let (depth, err): (i64, String) = isle
            .eval(
                "local depth = 0
                 local function f(s) depth = depth + 1 return (s:gsub('.', f)) end
                 local ok, err = pcall(f, 'ab')
                 return depth, err",
            )
            .unwrap();
        assert_eq!(err, "C stack overflow");
        assert!((1000..4000).contains(&depth), "{depth}");
        // 900 levels, as deep as plain LuaJIT gets on an 8 MiB main thread.
        let depth: i64 = isle
            .eval(
                "local depth = 0
                 local function f(s)
                   depth = depth + 1
                   if depth < 900 then s:gsub('.', f) end
                   return s
                 end
                 f('a')
                 return depth",
            )
            .unwrap();
        assert_eq!(depth, 900);
    });
}
