//! Running a script you did not write: the sandbox preset, read-only host tables, a fresh
//! environment per request and a deadline.
//!
//! Run with: `cargo run --example sandbox`

use mlua_isle::{Isle, IsleError};

fn main() -> Result<(), IsleError> {
    let isle = Isle::builder()
        .sandboxed() // strict sandbox, fresh environment per request, 64 MiB, 1 s, 250 ms grace
        .spawn(|lua| {
            // `init` runs with everything; what it leaves is read-only to scripts.
            lua.globals()
                .set("limits", lua.create_table_from([("max", 10)])?)
        })?;
    assert_eq!(isle.eval::<i64>("limits.max")?, 10);
    assert!(isle.eval::<()>("limits.max = 99").is_err()); // read-only
    assert!(isle.eval::<bool>("io == nil and os.exit == nil and require == nil")?);
    isle.eval::<()>("leftover = 1")?;
    assert_eq!(isle.eval::<Option<i64>>("leftover")?, None); // fresh environment
    assert!(matches!(
        isle.eval::<()>("while true do end"),
        Err(IsleError::Timeout)
    ));
    println!("sandboxed isle: host table read-only, leftovers gone, loop stopped");
    Ok(())
}
