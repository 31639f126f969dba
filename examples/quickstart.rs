//! A tour of mlua-isle: eval, call, exec, a cancelled infinite loop and a timeout.
//!
//! Run with: `cargo run --example quickstart`

use std::time::{Duration, Instant};

use mlua_isle::{Isle, IsleError};

fn main() -> Result<(), IsleError> {
    // The VM lives on its own thread; `init` runs there.
    let isle = Isle::spawn(|lua| {
        lua.load(
            r#"
            function greet(name) return "hello, " .. name end
            counter = 0
            "#,
        )
        .exec()
    })?;

    // eval: an expression or a block, with a typed result.
    let sum: i64 = isle.eval("1 + 2 + 3")?;
    println!("eval    1 + 2 + 3             -> {sum}");

    // call: a global function with arguments.
    let greeting: String = isle.call("greet", "isle")?;
    println!("call    greet('isle')         -> {greeting}");

    // exec: a closure that gets the VM itself.
    let counter = isle.exec(|lua| {
        lua.globals().set("counter", 41)?;
        lua.load("counter = counter + 1; return counter")
            .eval::<i64>()
    })?;
    println!("exec    counter + 1           -> {counter}");

    // An infinite loop, wrapped in pcall so that a naive interrupt would be swallowed,
    // cancelled from this thread.
    let task =
        isle.spawn_eval::<()>("while true do pcall(function() while true do end end) end")?;
    // Give it 20 ms: it does not finish, and we get the task back, still running.
    let task = task.wait_timeout(Duration::from_millis(20)).unwrap_err();
    let started = Instant::now();
    task.cancel();
    let outcome = task.wait();
    println!(
        "cancel  pcall-wrapped loop    -> {:?} after {:?}",
        outcome.unwrap_err(),
        started.elapsed()
    );

    // A deadline on one request.
    let outcome = isle
        .request()
        .timeout(Duration::from_millis(50))
        .eval::<()>("local n = 0 while true do n = n + 1 end");
    println!("timeout 50 ms on a busy loop  -> {}", outcome.unwrap_err());

    // The VM survived both.
    let still: String = isle.call("greet", "again")?;
    println!("after   greet('again')        -> {still}");

    isle.shutdown()?;
    println!("shutdown                      -> ok");
    Ok(())
}
