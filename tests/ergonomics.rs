//! Request verbs take code and function names as any string type: a `&str` of any lifetime,
//! `String`, `&String`, `Box<str>`, `Arc<str>`, `Cow<'_, str>`, on `Isle` and `AsyncIsle`.

mod common;

use std::borrow::Cow;
use std::sync::Arc;

use common::*;
use mlua_isle::{Isle, IsleError};

const PRELUDE: &str = "
    function add(a, b) return a + b end
    function twice(x) return 2 * x end
";

fn isle() -> Isle {
    Isle::spawn(|lua| lua.load(PRELUDE).exec()).expect("isle starts")
}

/// What a REPL does: evaluate a line it was handed for as long as the call lasts.
fn eval_line(isle: &Isle, line: &str) -> Result<i64, IsleError> {
    isle.eval(line)
}

/// Calls a function whose name was borrowed from somewhere short-lived.
fn call_named(isle: &Isle, name: &str, arg: i64) -> Result<i64, IsleError> {
    isle.call(name, arg)
}

#[test]
fn blocking_verbs_take_borrowed_code_of_any_lifetime() {
    within_hang_guard(|| {
        let isle = isle();
        let typed = String::from("1 + 2");
        assert_eq!(eval_line(&isle, &typed).unwrap(), 3);
        assert_eq!(isle.eval::<i64>(typed.as_str()).unwrap(), 3);
        assert_eq!(isle.eval::<i64>(&typed).unwrap(), 3);
        assert_eq!(
            isle.eval::<i64>(format!("{} * {}", 6, 7).as_str()).unwrap(),
            42
        );
        let long = format!("return {}", "1 + ".repeat(100) + "1");
        assert_eq!(isle.eval::<i64>(long.as_str()).unwrap(), 101);

        let name = String::from("twice");
        assert_eq!(call_named(&isle, &name, 4).unwrap(), 8);
        assert_eq!(isle.call::<i64>(name.as_str(), 5).unwrap(), 10);
        assert_eq!(
            isle.call::<i64>(format!("a{}", "dd").as_str(), (1, 2))
                .unwrap(),
            3
        );

        let task = isle.spawn_eval::<i64>(typed.as_str()).unwrap();
        assert_eq!(task.wait().unwrap(), 3);
        let task = isle.spawn_call::<i64>(name.as_str(), 6).unwrap();
        assert_eq!(task.wait().unwrap(), 12);

        let request = || isle.request();
        assert_eq!(request().eval::<i64>(typed.as_str()).unwrap(), 3);
        assert_eq!(request().call::<i64>(name.as_str(), 7).unwrap(), 14);
        let task = request().spawn_eval::<i64>(typed.as_str()).unwrap();
        assert_eq!(task.wait().unwrap(), 3);
        let task = request().spawn_call::<i64>(name.as_str(), 8).unwrap();
        assert_eq!(task.wait().unwrap(), 16);
    });
}

#[test]
fn blocking_verbs_take_owned_and_shared_strings() {
    within_hang_guard(|| {
        let isle = isle();
        assert_eq!(isle.eval::<i64>(String::from("2 + 2")).unwrap(), 4);
        let boxed: Box<str> = "3 + 3".into();
        assert_eq!(isle.eval::<i64>(boxed).unwrap(), 6);
        let shared: Arc<str> = Arc::from("4 + 4");
        assert_eq!(isle.eval::<i64>(shared.clone()).unwrap(), 8);
        assert_eq!(isle.eval::<i64>(&shared).unwrap(), 8);
        let line = String::from("5 + 5");
        assert_eq!(isle.eval::<i64>(Cow::Borrowed(line.as_str())).unwrap(), 10);
        assert_eq!(isle.eval::<i64>(Cow::<str>::Owned(line)).unwrap(), 10);
        // `&'static str` and `Cow<'static, str>`, as before.
        assert_eq!(isle.eval::<i64>("6 + 6").unwrap(), 12);
        assert_eq!(isle.eval::<i64>(Cow::Borrowed("7 + 7")).unwrap(), 14);

        let name: Arc<str> = Arc::from("twice");
        assert_eq!(isle.call::<i64>(name.clone(), 1).unwrap(), 2);
        assert_eq!(isle.call::<i64>(String::from("twice"), 2).unwrap(), 4);
        let boxed: Box<str> = "twice".into();
        assert_eq!(isle.spawn_call::<i64>(boxed, 3).unwrap().wait().unwrap(), 6);
        let task = isle.spawn_eval::<i64>(Arc::<str>::from("8 + 8")).unwrap();
        assert_eq!(task.wait().unwrap(), 16);
    });
}

#[test]
fn a_borrowed_line_may_go_away_while_its_request_runs() {
    within_hang_guard(|| {
        let isle = isle();
        let task = {
            let line = String::from("local s = 0 for i = 1, 1000 do s = s + i end return s");
            isle.spawn_eval::<i64>(line.as_str()).unwrap()
        };
        assert_eq!(task.wait().unwrap(), 500500);
    });
}

#[cfg(feature = "tokio")]
mod async_verbs {
    use super::*;

    use mlua_isle::AsyncIsle;

    /// Runs `scenario` as a spawned task (so its futures must be `Send`) on both tokio
    /// flavours, under the hang guard.
    macro_rules! on_both_runtimes {
        ($($name:ident => $scenario:expr;)*) => {$(
            mod $name {
                use super::*;
                #[test]
                fn current_thread() {
                    run(tokio::runtime::Builder::new_current_thread(), || $scenario);
                }
                #[test]
                fn multi_thread() {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(2);
                    run(builder, || $scenario);
                }
            }
        )*};
    }

    fn run<F, Fut>(mut builder: tokio::runtime::Builder, scenario: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        within_hang_guard(move || {
            let runtime = builder.enable_all().build().unwrap();
            runtime
                .block_on(runtime.spawn(scenario()))
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        });
    }

    async fn isle() -> (AsyncIsle, mlua_isle::AsyncIsleDriver) {
        AsyncIsle::spawn(|lua| lua.load(PRELUDE).exec())
            .await
            .expect("isle starts")
    }

    /// An async REPL step: the line is borrowed for as long as the future lives.
    async fn eval_line(isle: &AsyncIsle, line: &str) -> Result<i64, IsleError> {
        isle.eval(line).await
    }

    async fn borrowed_code_of_any_lifetime() {
        let (isle, driver) = isle().await;
        let typed = String::from("1 + 2");
        assert_eq!(eval_line(&isle, &typed).await.unwrap(), 3);
        assert_eq!(isle.eval::<i64>(typed.as_str()).await.unwrap(), 3);
        let formatted = isle.eval::<i64>(format!("{} * {}", 6, 7).as_str()).await;
        assert_eq!(formatted.unwrap(), 42);
        let name = String::from("twice");
        assert_eq!(isle.call::<i64>(name.as_str(), 4).await.unwrap(), 8);

        let task = isle.spawn_eval::<i64>(typed.as_str()).await.unwrap();
        assert_eq!(task.await.unwrap(), 3);
        let task = isle.spawn_call::<i64>(name.as_str(), 5).await.unwrap();
        assert_eq!(task.await.unwrap(), 10);

        let co = isle.coroutine_eval::<i64>(typed.as_str()).await;
        assert_eq!(co.unwrap(), 3);
        let co = isle.coroutine_call::<i64>(name.as_str(), 6).await;
        assert_eq!(co.unwrap(), 12);
        let task = isle.spawn_coroutine_eval::<i64>(typed.as_str()).await;
        assert_eq!(task.unwrap().await.unwrap(), 3);
        let task = isle.spawn_coroutine_call::<i64>(name.as_str(), 7).await;
        assert_eq!(task.unwrap().await.unwrap(), 14);

        let request = || isle.request();
        assert_eq!(request().eval::<i64>(typed.as_str()).await.unwrap(), 3);
        assert_eq!(request().call::<i64>(name.as_str(), 1).await.unwrap(), 2);
        let task = request().spawn_eval::<i64>(typed.as_str()).await.unwrap();
        assert_eq!(task.await.unwrap(), 3);
        let task = request().spawn_call::<i64>(name.as_str(), 2).await.unwrap();
        assert_eq!(task.await.unwrap(), 4);
        let co = request().coroutine_eval::<i64>(typed.as_str()).await;
        assert_eq!(co.unwrap(), 3);
        let co = request().coroutine_call::<i64>(name.as_str(), 3).await;
        assert_eq!(co.unwrap(), 6);
        let task = request().spawn_coroutine_eval::<i64>(typed.as_str()).await;
        assert_eq!(task.unwrap().await.unwrap(), 3);
        let task = request()
            .spawn_coroutine_call::<i64>(name.as_str(), 4)
            .await;
        assert_eq!(task.unwrap().await.unwrap(), 8);
        drop(isle);
        driver.shutdown().await.unwrap();
    }

    async fn owned_and_shared_strings() {
        let (isle, driver) = isle().await;
        assert_eq!(isle.eval::<i64>(String::from("2 + 2")).await.unwrap(), 4);
        let boxed: Box<str> = "3 + 3".into();
        assert_eq!(isle.eval::<i64>(boxed).await.unwrap(), 6);
        let shared: Arc<str> = Arc::from("4 + 4");
        assert_eq!(isle.eval::<i64>(shared.clone()).await.unwrap(), 8);
        let line = String::from("5 + 5");
        let cow = isle.eval::<i64>(Cow::Borrowed(line.as_str())).await;
        assert_eq!(cow.unwrap(), 10);
        assert_eq!(isle.eval::<i64>(Cow::<str>::Owned(line)).await.unwrap(), 10);
        assert_eq!(isle.eval::<i64>("6 + 6").await.unwrap(), 12);

        let name: Arc<str> = Arc::from("twice");
        assert_eq!(isle.call::<i64>(name.clone(), 1).await.unwrap(), 2);
        let co = isle.coroutine_call::<i64>(String::from("twice"), 2).await;
        assert_eq!(co.unwrap(), 4);
        let co = isle.coroutine_eval::<i64>(Arc::<str>::from("7 + 7")).await;
        assert_eq!(co.unwrap(), 14);
        let task = isle.request().spawn_call::<i64>(name, 3).await.unwrap();
        assert_eq!(task.await.unwrap(), 6);
        drop(isle);
        driver.shutdown().await.unwrap();
    }

    on_both_runtimes! {
        async_verbs_take_borrowed_code_of_any_lifetime => borrowed_code_of_any_lifetime();
        async_verbs_take_owned_and_shared_strings => owned_and_shared_strings();
    }
}

#[test]
fn code_with_a_nul_byte_compiles_as_lua_would_load_it() {
    // Lua names a loaded string after its text, which as a C string ends at the first NUL.
    for isle in [
        isle(),
        Isle::builder().sandboxed().spawn(|_| Ok(())).unwrap(),
    ] {
        // (Luau reads source only up to a NUL byte, as plain mlua on Luau does.)
        #[cfg(not(feature = "luau"))]
        {
            let bytes: Vec<u8> = isle.eval("{ ('a\0b'):byte(1, -1) }").unwrap();
            assert_eq!(bytes, b"a\0b");
        }
        let err = isle.eval::<()>("\u{1b}LuaT\0").unwrap_err();
        assert_eq!(
            err.as_lua().unwrap().kind(),
            mlua_isle::LuaErrorKind::Syntax,
            "{err:?}"
        );
    }
}
