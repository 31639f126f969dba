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

/// A table constructor of `n` entries, as Lua source.
fn table_constructor(n: usize) -> String {
    let mut source = String::with_capacity(n * 2 + 2);
    source.push('{');
    for _ in 0..n {
        source.push_str("1,");
    }
    source.push('}');
    source
}

/// The parser running out of memory is a memory error, whether it parses a chunk given to
/// `eval`, a chunk that is only an expression (not a valid block), or a file given to `dofile`
/// (which raises the parser's error again, as a runtime error before Lua 5.4). The isle keeps
/// serving.
#[test]
fn parser_out_of_memory_is_a_memory_error() {
    within_hang_guard(|| {
        let isle = Isle::builder()
            .memory_limit(4 << 20)
            .spawn(|_| Ok(()))
            .unwrap();
        let constructor = table_constructor(3_000_000);
        assert_memory_error(isle.eval::<()>(format!("return {constructor}")));
        assert_memory_error(isle.eval::<()>(format!("local t = {constructor}")));
        // Only an expression: `eval` tries it as one first. (Small enough for the source
        // itself to fit.)
        let small = Isle::builder()
            .memory_limit(1 << 20)
            .spawn(|_| Ok(()))
            .unwrap();
        assert_memory_error(small.eval::<()>(table_constructor(300_000)));
        assert_eq!(small.eval::<i64>("1 + 1").unwrap(), 2);
        #[cfg(not(feature = "luau"))]
        {
            let file = std::env::temp_dir().join(format!(
                "mlua-isle-memory-{}-parser.lua",
                std::process::id()
            ));
            std::fs::write(&file, format!("return {constructor}")).unwrap();
            let path = format!("{:?}", file.to_str().unwrap());
            let outcome = isle.eval::<()>(format!("dofile({path})"));
            let _ = std::fs::remove_file(&file);
            assert_memory_error(outcome);
        }
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
        let n: i64 = isle
            .eval("local t = {} for i = 1, 1e4 do t[i] = i end return #t")
            .unwrap();
        assert_eq!(n, 10_000);
    });
}

/// Lua 5.4 raises an error whose object is its memory error message as a memory error; the
/// isle reports it so on every version.
#[test]
fn an_error_carrying_the_memory_error_message_is_a_memory_error() {
    let isle = limited();
    assert_memory_error(isle.eval::<()>("error('not enough memory', 0)"));
    let other = isle
        .eval::<()>("error('not enough memory!', 0)")
        .unwrap_err();
    assert_eq!(other.as_lua().unwrap().kind(), LuaErrorKind::Runtime);
}
