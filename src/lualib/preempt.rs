//! Preemption: a watcher thread that notices a task running a whole time slice, and the
//! scheduler's calls that tell it which task runs.
//!
//! The watcher ticks once per (shortest) slice while some isle runs a task and sleeps
//! otherwise. At each tick it compares every isle's switch counter with the one it saw
//! before: a task first seen running at least that isle's slice ago, and still running, is
//! preempted through [`Interrupter::preempt`]. A task is thus preempted after one to two
//! slices.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use mlua::{ffi, Function, Lua};

use crate::interrupt::{self, Interrupter};

/// One isle the watcher looks at.
struct Watched {
    interrupter: Weak<Interrupter>,
    slice: Duration,
    /// The switch counter seen at the last tick, if a task was running then, and when it was
    /// first seen.
    seen: Option<(u64, Instant)>,
}

/// Slices after which a task still running is signalled again (and again after as many).
const REDELIVER_AFTER_SLICES: u32 = 50;

struct Watcher {
    isles: Mutex<Vec<Watched>>,
    wake: Condvar,
    /// Whether the watcher ticks (rather than sleeps until told).
    ticking: AtomicBool,
}

static WATCHER: Watcher = Watcher {
    isles: Mutex::new(Vec::new()),
    wake: Condvar::new(),
    ticking: AtomicBool::new(false),
};

static STARTED: std::sync::Once = std::sync::Once::new();

fn run() {
    let mut isles = WATCHER.isles.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        isles.retain(|w| w.interrupter.strong_count() > 0);
        let mut slice = None::<Duration>;
        let mut busy = false;
        for watched in isles.iter_mut() {
            let Some(interrupter) = watched.interrupter.upgrade() else {
                continue;
            };
            let (epoch, in_task) = interrupter.slices().observe();
            if in_task {
                busy = true;
                let now = Instant::now();
                match watched.seen {
                    // The same task has run since `since`: a whole slice of this isle's?
                    Some((seen, since)) if seen == epoch => {
                        let ran = now.duration_since(since);
                        if ran >= watched.slice {
                            let again = ran >= watched.slice * REDELIVER_AFTER_SLICES;
                            interrupter.preempt(epoch, again);
                            if again {
                                // Counted anew: the next delivery comes as many slices later,
                                // not at every tick from now on.
                                watched.seen = Some((epoch, now));
                            }
                        }
                    }
                    _ => watched.seen = Some((epoch, now)),
                }
                slice = Some(slice.map_or(watched.slice, |s| s.min(watched.slice)));
            } else {
                watched.seen = None;
            }
        }
        if !busy {
            // Told to stop ticking first, then looks again: a task starting meanwhile either
            // is seen here or sees the watcher asleep and wakes it.
            WATCHER.ticking.store(false, Ordering::SeqCst);
            let started = isles.iter().any(|w| {
                w.interrupter
                    .upgrade()
                    .is_some_and(|i| i.slices().observe().1)
            });
            if !started {
                isles = WATCHER
                    .wake
                    .wait(isles)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            WATCHER.ticking.store(true, Ordering::SeqCst);
            continue;
        }
        let (guard, _) = WATCHER
            .wake
            .wait_timeout(isles, slice.unwrap_or(Duration::from_millis(1)))
            .unwrap_or_else(PoisonError::into_inner);
        isles = guard;
    }
}

/// Wakes the watcher if it sleeps.
fn wake_watcher() {
    if !WATCHER.ticking.load(Ordering::SeqCst) {
        let _isles = WATCHER.isles.lock().unwrap_or_else(PoisonError::into_inner);
        WATCHER.ticking.store(true, Ordering::SeqCst);
        WATCHER.wake.notify_one();
    }
}

/// One isle's membership of the watcher's list; leaves it when dropped.
pub(super) struct Registration {
    interrupter: Arc<Interrupter>,
}

thread_local! {
    /// The interrupter of the isle on this thread, for the scheduler's C functions.
    static ACTIVE: std::cell::Cell<*const Interrupter> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl Registration {
    pub(super) fn new(interrupter: &Arc<Interrupter>, slice: Duration) -> Self {
        STARTED.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("mlua-isle-preempt".into())
                .spawn(run);
        });
        WATCHER
            .isles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Watched {
                interrupter: Arc::downgrade(interrupter),
                slice,
                seen: None,
            });
        ACTIVE.set(Arc::as_ptr(interrupter));
        Registration {
            interrupter: interrupter.clone(),
        }
    }

    /// `slice_begin(co)` and `slice_end(outer_co_or_nil)` for the scheduler.
    pub(super) fn functions(&self, lua: &Lua) -> mlua::Result<(Function, Function)> {
        // SAFETY: both are C functions that read one stack slot and raise no error.
        unsafe { Ok((lua.create_c_function(begin)?, lua.create_c_function(end)?)) }
    }

    /// No task runs any more.
    pub(super) fn reset(&self) {
        interrupt::reset_slices(&self.interrupter);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.reset();
        ACTIVE.set(std::ptr::null());
        let me = Arc::as_ptr(&self.interrupter);
        WATCHER
            .isles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|w| w.interrupter.as_ptr() != me);
    }
}

/// `slice_begin(co)`: the task whose coroutine is `co` runs from now on.
unsafe extern "C-unwind" fn begin(state: *mut ffi::lua_State) -> c_int {
    let interrupter = ACTIVE.get();
    // SAFETY: `state` is the calling state; `lua_tothread` returns null for a non-thread. The
    // interrupter is kept alive by the registration, which set the pointer on this thread.
    // The coroutine is the scheduler's running task, alive (it is running) until the
    // scheduler calls `slice_end`.
    unsafe {
        let task = ffi::lua_tothread(state, 1);
        if let (Some(interrupter), false) = (interrupter.as_ref(), task.is_null()) {
            interrupt::slice_begin(interrupter, task);
            wake_watcher();
        }
    }
    0
}

/// `slice_end(outer)`: control is back in `outer` (a task's coroutine), or in the request's
/// own code (`nil`).
unsafe extern "C-unwind" fn end(state: *mut ffi::lua_State) -> c_int {
    let interrupter = ACTIVE.get();
    // SAFETY: as in `begin`; a non-null `outer` is a task that started the one that just
    // gave control back, alive while it runs.
    unsafe {
        let outer = ffi::lua_tothread(state, 1);
        if let Some(interrupter) = interrupter.as_ref() {
            interrupt::slice_end(interrupter, outer);
        }
    }
    0
}
