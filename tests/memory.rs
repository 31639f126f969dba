//! Memory limits.

mod common;

use common::*;
use mlua_isle::{Isle, IsleError, LuaErrorKind};

fn limited() -> Isle {
    Isle::builder()
        .memory_limit(8 << 20)
        .spawn(|lua| lua.globals().set("kept", "before"))
        .unwrap()
}

fn assert_memory_error(result: Result<(), IsleError>) {
    match result {
        Err(IsleError::Lua(e)) => assert_eq!(e.kind(), LuaErrorKind::Memory, "{e}"),
        other => panic!("expected a memory error, got {other:?}"),
    }
}

#[test]
fn allocation_past_the_limit_is_a_memory_error() {
    within_hang_guard(|| {
        let isle = limited();
        assert_memory_error(isle.eval::<()>("local t = {} for i = 1, 1e8 do t[i] = i end"));
        assert_memory_error(isle.eval::<()>("return string.rep('x', 64 * 1024 * 1024)"));
        assert_memory_error(isle.eval::<()>("local s = 'x' while true do s = s .. s end"));
    });
}

#[test]
fn isle_keeps_serving_after_a_memory_error_with_globals_intact() {
    within_hang_guard(|| {
        let isle = limited();
        isle.eval::<()>("counter = 41").unwrap();
        assert_memory_error(isle.eval::<()>("local hog = {} for i = 1, 1e8 do hog[i] = {} end"));
        assert_eq!(isle.eval::<String>("kept").unwrap(), "before");
        assert_eq!(isle.eval::<i64>("counter + 1").unwrap(), 42);
        // What the failed request allocated is garbage now: a large allocation works again.
        let n: i64 = isle
            .eval("local t = {} for i = 1, 1e5 do t[i] = i end return #t")
            .unwrap();
        assert_eq!(n, 100_000);
    });
}

#[test]
fn memory_held_by_a_global_can_be_released_from_rust() {
    within_hang_guard(|| {
        let isle = limited();
        assert_memory_error(isle.eval::<()>("hog = {} for i = 1, 1e8 do hog[i] = {} end"));
        // Even compiling new code may fail while `hog` holds the memory; `exec` needs none.
        isle.exec(|lua| {
            lua.globals().raw_set("hog", mlua_isle::mlua::Value::Nil)?;
            lua.gc_collect()
        })
        .unwrap();
        assert_eq!(isle.eval::<String>("kept").unwrap(), "before");
    });
}

#[test]
fn memory_error_caught_by_pcall_is_an_ordinary_lua_error() {
    let isle = limited();
    let caught: bool = isle
        .eval("return not pcall(string.rep, 'x', 64 * 1024 * 1024)")
        .unwrap();
    assert!(caught);
    assert_eq!(isle.eval::<i64>("1").unwrap(), 1);
}

#[test]
fn init_beyond_the_limit_fails_spawn() {
    let err = Isle::builder()
        .memory_limit(1 << 20)
        .spawn(|lua| lua.load("big = string.rep('x', 4 * 1024 * 1024)").exec())
        .unwrap_err();
    match err {
        IsleError::Init(inner) => {
            assert_eq!(inner.as_lua().unwrap().kind(), LuaErrorKind::Memory)
        }
        other => panic!("{other:?}"),
    }
}
