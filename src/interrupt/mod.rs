//! How a running request is stopped: the only place that touches Lua's debug hooks.
//!
//! The caller side ([`Interrupter`]) is Lua-free: a cancel raises the *cancelled generation* to
//! the generation of the request it targets. The Lua side ([`Armed`]) tags each running request
//! with its generation; the interrupt is pending exactly while the running generation is at most
//! the cancelled one, so a cancel that arrives after its request finished can never stop the
//! next one.
//!
//! While an interrupt is pending, the Lua code is stopped by raising an error from a count hook
//! at *every* instruction, on whichever coroutine runs: a `pcall` can catch the error, but the
//! very next instruction raises it again, so the request unwinds to the top.
//!
//! Lua runs an `xpcall` message handler with hooks disabled when the error came from a hook, so
//! `xpcall` is wrapped: while an interrupt is pending its handler passes the error through
//! without calling the user's handler.

mod hook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_utils::CachePadded;
use mlua::Lua;

/// The generation that means "every request": set when the isle is killed.
const KILL_ALL: u64 = u64::MAX;

/// Lets any thread interrupt the request running on one isle's Lua thread.
///
/// Every request holds an `Arc` to it, so its reference count changes on the callers' threads
/// all the time; the padding keeps the Lua thread's hot fields off that cache line.
#[derive(Debug, Default)]
pub(crate) struct Interrupter {
    /// Generation of the request running now; 0 between requests.
    running: CachePadded<AtomicU64>,
    /// Highest generation asked to stop.
    cancelled: CachePadded<AtomicU64>,
}

/// Why the running request is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancelled,
    Timeout,
    Killed,
}

impl Interrupter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Asks the request with generation `gen` to stop, if it is (still, or about to be) running.
    pub(crate) fn interrupt(&self, gen: u64) {
        self.cancelled.fetch_max(gen, Ordering::SeqCst);
    }

    /// Stops the running request and every later one.
    pub(crate) fn kill(&self) {
        self.cancelled.store(KILL_ALL, Ordering::SeqCst);
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) == KILL_ALL
    }

    #[cfg(test)]
    pub(crate) fn cancelled_generation(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the running request must stop because of a cancel or kill.
    fn stop_requested(&self) -> Option<Stop> {
        let running = self.running.load(Ordering::Relaxed);
        if running == 0 {
            return None;
        }
        match self.cancelled.load(Ordering::Acquire) {
            KILL_ALL => Some(Stop::Killed),
            cancelled if cancelled >= running => Some(Stop::Cancelled),
            _ => None,
        }
    }
}

/// The Lua-thread side: installed once per VM, then bracketing every request.
pub(crate) struct Armed {
    hook: hook::CountHook,
    interrupter: Arc<Interrupter>,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").finish_non_exhaustive()
    }
}

/// How often (in VM instructions) the idle hook checks for a pending interrupt.
pub(crate) const DEFAULT_CHECK_EVERY: u32 = 1000;

impl Armed {
    /// Installs the interrupt machinery into `lua`. Must run on the Lua thread, before any
    /// user code, so that every coroutine inherits the hook.
    pub(crate) fn install(lua: &Lua, interrupter: Arc<Interrupter>) -> mlua::Result<Self> {
        let hook = hook::CountHook::install(lua, &interrupter, DEFAULT_CHECK_EVERY)?;
        guard_xpcall(lua)?;
        Ok(Armed { hook, interrupter })
    }

    /// Marks the request with generation `gen` as running until [`end`](Self::end).
    pub(crate) fn begin(&self, gen: u64, deadline: Option<Instant>) {
        self.hook.set_deadline(deadline);
        // Only this thread reads `running` (in the hook): no ordering needed.
        self.interrupter.running.store(gen, Ordering::Relaxed);
    }

    /// Marks the running request as finished and clears any interrupt left behind.
    pub(crate) fn end(&self) {
        self.interrupter.running.store(0, Ordering::Relaxed);
        self.hook.set_deadline(None);
        self.hook.reset_if_raised();
    }

    /// Why the request in progress has to stop, if it has to.
    #[allow(dead_code)]
    pub(crate) fn pending(&self) -> Option<Stop> {
        hook::pending()
    }
}

/// Replaces the global `xpcall` with one whose message handler is skipped while an interrupt is
/// pending (Lua runs that handler with hooks disabled, so a looping handler could not be
/// stopped otherwise).
fn guard_xpcall(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    let Ok(xpcall) = globals.get::<mlua::Function>("xpcall") else {
        return Ok(());
    };
    let pending = lua.create_function(|_, ()| Ok(hook::pending().is_some()))?;
    let guarded: mlua::Function = lua
        .load(
            r#"
            local xpcall, pending, type = ...
            return function(f, handler, ...)
                if type(handler) ~= "function" then
                    return xpcall(f, handler, ...)
                end
                return xpcall(f, function(e)
                    if pending() then
                        return e
                    end
                    return handler(e)
                end, ...)
            end
            "#,
        )
        .set_name("=[isle xpcall guard]")
        .call((xpcall, pending, globals.get::<mlua::Value>("type")?))?;
    globals.set("xpcall", guarded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_cancel_does_not_stop_the_next_request() {
        let i = Interrupter::new();
        i.running.store(1, Ordering::SeqCst);
        i.running.store(0, Ordering::SeqCst);
        i.running.store(2, Ordering::SeqCst);
        i.interrupt(1);
        assert_eq!(i.stop_requested(), None);
        i.interrupt(2);
        assert_eq!(i.stop_requested(), Some(Stop::Cancelled));
    }

    #[test]
    fn a_cancel_before_begin_is_seen_at_begin() {
        let i = Interrupter::new();
        i.interrupt(5);
        i.running.store(5, Ordering::SeqCst);
        assert_eq!(i.stop_requested(), Some(Stop::Cancelled));
    }

    #[test]
    fn nothing_is_pending_between_requests() {
        let i = Interrupter::new();
        i.kill();
        assert_eq!(i.stop_requested(), None);
        i.running.store(9, Ordering::SeqCst);
        assert_eq!(i.stop_requested(), Some(Stop::Killed));
    }
}
