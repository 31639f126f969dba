//! Luau's interrupt: its VM-wide interrupt callback, installed only while a cancel or deadline
//! is pending (`Interrupt::OnDemand`, the default), or for good (`Interrupt::Hook`).
#![cfg(feature = "luau")]

mod common;

use std::time::Duration;

use common::*;
use mlua_isle::mlua::{ffi, Lua};
use mlua_isle::{Interrupt, Isle};

/// Whether the VM has an interrupt callback installed right now.
fn interrupt_installed(lua: &Lua) -> mlua_isle::mlua::Result<bool> {
    let mut installed = false;
    // SAFETY: `exec_raw` runs the closure with the VM's state inside a protected call;
    // `lua_callbacks` returns the VM's callbacks, whose `interrupt` field is only read.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            installed = (*ffi::lua_callbacks(state)).interrupt.is_some();
        })?;
    }
    Ok(installed)
}

#[test]
fn nothing_is_installed_while_idle_nor_after_an_interrupt() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        assert!(!isle.exec(interrupt_installed).unwrap());
        let task = isle
            .spawn_eval::<()>("started() while true do end")
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert!(!isle.exec(interrupt_installed).unwrap());
        let err = isle
            .request()
            .timeout(Duration::from_millis(20))
            .eval::<()>("while true do pcall(function() while true do end end) end")
            .unwrap_err();
        assert!(err.is_timeout());
        assert!(!isle.exec(interrupt_installed).unwrap());
    });
}

#[test]
fn the_permanent_callback_stays_and_enforces_deadlines() {
    within_hang_guard(|| {
        let (isle, started) =
            isle_with_started(Isle::builder().interrupt(Interrupt::Hook { every: 100 }));
        assert!(isle.exec(interrupt_installed).unwrap());
        let err = isle
            .request()
            .timeout(Duration::from_millis(20))
            .eval::<()>("while true do end")
            .unwrap_err();
        assert!(err.is_timeout());
        let task = isle
            .spawn_eval::<()>("started() while true do pcall(function() while true do end end) end")
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert!(isle.exec(interrupt_installed).unwrap());
        assert_eq!(isle.eval::<i64>("1 + 1").unwrap(), 2);
    });
}

#[test]
fn coroutines_created_before_the_cancel_stop_too() {
    within_hang_guard(|| {
        let (isle, started) = isle_with_started(Isle::builder());
        isle.eval::<()>(
            "parked = coroutine.create(function()
               coroutine.yield()
               started()
               while true do pcall(function() while true do end end) end
             end)
             coroutine.resume(parked)",
        )
        .unwrap();
        let task = isle
            .spawn_eval::<()>("while true do coroutine.resume(parked) end")
            .unwrap();
        wait_started(&started);
        task.cancel();
        assert!(task.wait().unwrap_err().is_cancelled());
        assert_eq!(isle.eval::<i64>("2").unwrap(), 2);
    });
}
