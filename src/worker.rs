//! The Lua thread: builds the VM, then runs queued jobs one at a time until every handle is
//! gone.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use mlua::Lua;

use crate::current;
use crate::error::IsleError;
use crate::handle::Shared;
use crate::interrupt::{Armed, Interrupt};
use crate::slot::{Completer, Resolve, Slot};
use crate::token::CancelToken;
use crate::vm::{self, Vm, VmSource};
use crate::wait;

/// A request as the Lua thread sees it: its slot, whatever the work and result types.
pub(crate) trait Job: Resolve + 'static {
    /// Runs the request (unless it was resolved while queued) and resolves it.
    fn run(self: Arc<Self>, worker: &mut Worker, token: CancelToken, deadline: Option<Instant>);
}

/// What travels through the queue. Dropping it unrun resolves its request with
/// [`IsleError::Shutdown`], so a request can never be left unresolved.
pub(crate) struct Queued {
    /// `None` for a wake-up marker, and once the job has been handed to the Lua thread.
    job: Option<(Arc<dyn Job>, CancelToken)>,
    deadline: Option<Instant>,
}

impl Queued {
    pub(crate) fn new(job: Arc<dyn Job>, token: CancelToken, deadline: Option<Instant>) -> Self {
        Queued {
            job: Some((job, token)),
            deadline,
        }
    }

    /// A marker that only wakes the Lua thread up (to notice that the queue was closed).
    #[cfg(feature = "tokio")]
    pub(crate) fn wake() -> Self {
        Queued {
            job: None,
            deadline: None,
        }
    }

    fn run(mut self, worker: &mut Worker) {
        if let Some((job, token)) = self.job.take() {
            job.run(worker, token, self.deadline);
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some((job, _)) = self.job.take() {
            job.resolve(IsleError::Shutdown);
        }
    }
}

/// The user's `init` closure.
pub(crate) type Init = Box<dyn FnOnce(&Lua) -> mlua::Result<()> + Send>;

/// Everything the Lua thread needs to build its VM.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) source: VmSource,
    pub(crate) memory_limit: Option<usize>,
    pub(crate) chunk_cache: usize,
    pub(crate) allow_binary_chunks: bool,
    pub(crate) interrupt: Interrupt,
}

/// The Lua thread's state between jobs.
pub(crate) struct Worker {
    // Field order is drop order: the hook registration goes before the VM it points into.
    armed: Armed,
    vm: Vm,
    shared: Arc<Shared>,
    next_gen: u64,
}

impl Worker {
    fn new(
        setup: Setup,
        init: Init,
        shared: &Arc<Shared>,
        ready: Arc<Slot<()>>,
    ) -> Result<Worker, IsleError> {
        let build = || -> Result<Worker, IsleError> {
            let lua = setup.source.create()?;
            if let Some(limit) = setup.memory_limit {
                lua.set_memory_limit(limit)?;
            }
            if !setup.allow_binary_chunks {
                vm::forbid_binary_chunks(&lua)?;
            }
            let armed = Armed::install(&lua, shared.interrupter.clone(), setup.interrupt)?;
            let mut worker = Worker {
                armed,
                vm: Vm::new(lua, setup.chunk_cache),
                shared: shared.clone(),
                next_gen: 1,
            };
            // `init` runs like a request: under the isle's default deadline.
            let deadline = shared.default_timeout.and_then(wait::deadline_after);
            let gen = worker.next_generation();
            worker.armed.begin(gen, deadline);
            shared.request_started(ready, deadline);
            let result = init(worker.vm.lua());
            worker.armed.end();
            shared.request_ended();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(IsleError::Timeout);
            }
            result?;
            Ok(worker)
        };
        catch_unwind(AssertUnwindSafe(build))
            .unwrap_or_else(|panic| Err(IsleError::Panic(panic_message(&*panic))))
    }

    fn next_generation(&mut self) -> u64 {
        let gen = self.next_gen;
        self.next_gen += 1;
        gen
    }
}

/// The body of an isle's Lua thread.
pub(crate) fn run(
    setup: Setup,
    init: Init,
    shared: Arc<Shared>,
    rx: Receiver<Queued>,
    ready: Completer<()>,
) {
    current::set_isle_id(shared.id);
    // Whatever way this thread ends, nothing queued is left unresolved.
    let exit = ExitGuard { shared: &shared };
    let mut worker = match Worker::new(setup, init, &shared, ready.slot()) {
        Ok(worker) => worker,
        Err(err) => return ready.complete(Err(err)),
    };
    ready.complete(Ok(()));

    while let Some(job) = next_job(&rx) {
        #[cfg(feature = "tokio")]
        shared.room.notify(1);
        if shared.interrupter.is_killed() {
            drop(job);
            continue;
        }
        job.run(&mut worker);
        if shared.is_abandoned() {
            // Given up on while stuck in that job: leave without touching the queue again.
            break;
        }
        if shared.is_closed() && rx.is_empty() {
            // Closed while handles still exist (an async driver's shutdown): what was
            // accepted is done. Late senders drain their own jobs once this thread is gone.
            break;
        }
    }
    // Refuse and resolve late submissions before closing the VM, whose finalizers may run long.
    drop(exit);
    drop(worker);
}

struct ExitGuard<'a> {
    shared: &'a Shared,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.shared.close_and_drain();
    }
}

/// The next job, polling briefly before blocking; `None` once every sender is gone and the
/// queue is empty.
fn next_job(rx: &Receiver<Queued>) -> Option<Queued> {
    let mut next = None;
    let mut disconnected = false;
    let found = wait::spin_until(|| match rx.try_recv() {
        Ok(job) => {
            next = Some(job);
            true
        }
        Err(TryRecvError::Empty) => false,
        Err(TryRecvError::Disconnected) => {
            disconnected = true;
            true
        }
    });
    if found {
        return next;
    }
    if disconnected {
        return None;
    }
    rx.recv().ok()
}

/// A request: run its work on the VM and resolve its slot with the outcome.
impl<T, W> Job for Slot<T, W>
where
    T: Send + 'static,
    W: FnOnce(&mut Vm) -> Result<T, IsleError> + Send + 'static,
{
    fn run(self: Arc<Self>, worker: &mut Worker, token: CancelToken, deadline: Option<Instant>) {
        let gen = worker.next_generation();
        let Some(work) = self.start(gen) else {
            // Cancelled or expired while queued: already resolved, never started.
            return;
        };
        if token.is_cancelled() {
            self.complete(Err(IsleError::Cancelled));
            return;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.complete(Err(IsleError::Timeout));
            return;
        }

        worker.armed.begin(gen, deadline);
        // After `begin`: the watchdog must see the generation this deadline belongs to.
        worker.shared.request_started(self.clone(), deadline);
        current::enter(token, deadline);
        let result = catch_unwind(AssertUnwindSafe(|| work(&mut worker.vm)));
        let token = current::leave().expect("the request context is set while it runs");
        worker.armed.end();
        worker.shared.request_ended();

        // A request stopped (or merely caught up) by a cancel or deadline reports that, whatever
        // the code did with the interruption.
        let outcome = if token.is_cancelled() {
            Err(IsleError::Cancelled)
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Err(IsleError::Timeout)
        } else if worker.shared.interrupter.is_killed() {
            Err(IsleError::Shutdown)
        } else {
            result.unwrap_or_else(|panic| Err(IsleError::Panic(panic_message(&*panic))))
        };
        self.complete(outcome);
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
