//! Test-only pauses at the windows where a racing cancel could once be lost: a test arms a
//! window for one thread (by name), the thread stops there, the test acts, then lets it go.

// Not every window exists with every Lua version.
#![allow(dead_code)]

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

/// A place in the code where a concurrent stop request used to be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// A leftover interrupt hook found nothing pending and is about to remove itself.
    HookRemoval,
    /// A coroutine resumed from Rust was found not to need arming and is about to be recorded.
    RustResumed,
    /// A coroutine request checked it need not stop and is about to start its next stretch.
    CoroutineStretch,
    /// The Lua thread checked that the isle was not killed and is about to run a job.
    JobStart,
    /// The Lua thread ran a job, found the isle not closed, and is about to wait for the next.
    JobEnded,
    /// The Lua thread found no job and is about to block until one comes or the isle is killed.
    WaitingForJob,
    /// A child token is registered with its parent, but its `Arc` is not built yet.
    ChildUnbuilt,
    /// A pool's supervisor took a member out of the pool and has not yet recorded it among
    /// the retired members a shutdown waits for.
    RetireUnrecorded,
    /// A pool's shutdown has stopped the members it found and waits for the supervisor to end.
    AwaitingSupervisor,
    /// A spare thread's wait for another isle ran out; it has not yet withdrawn from the
    /// spares.
    SpareExpiring,
    /// A spare thread holds the list of spares, having just added itself.
    SparesLocked,
    /// The Lua thread has closed the VM and not yet withdrawn the close's deadline.
    VmClosed,
}

struct Armed {
    window: Window,
    thread: String,
    reached: Sender<()>,
    release: Receiver<()>,
}

static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

/// A window armed by [`arm`]: wait until the thread reaches it, then release it.
pub(crate) struct Paused {
    reached: Receiver<()>,
    release: Sender<()>,
}

impl Paused {
    /// Waits until the thread stands in the window; panics after a generous hang guard.
    pub(crate) fn reached(&self) {
        self.reached
            .recv_timeout(Duration::from_secs(20))
            .expect("the paused thread never reached its window");
    }

    /// Lets the thread go on.
    pub(crate) fn release(self) {
        let _ = self.release.send(());
    }
}

/// Makes the next thread named `thread` that reaches `window` stop there.
pub(crate) fn arm(window: Window, thread: &str) -> Paused {
    let (reached_tx, reached_rx) = channel();
    let (release_tx, release_rx) = channel();
    ARMED.lock().unwrap().push(Armed {
        window,
        thread: thread.to_owned(),
        reached: reached_tx,
        release: release_rx,
    });
    Paused {
        reached: reached_rx,
        release: release_tx,
    }
}

/// Stops here if a test armed `window` for this thread. Never call it from a signal handler.
pub(crate) fn at(window: Window) {
    let current = thread::current();
    let Some(name) = current.name() else {
        return;
    };
    let armed = {
        let mut armed = ARMED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(i) = armed
            .iter()
            .position(|a| a.window == window && a.thread == name)
        else {
            return;
        };
        armed.swap_remove(i)
    };
    let _ = armed.reached.send(());
    let _ = armed.release.recv_timeout(Duration::from_secs(20));
}
