//! The Lua thread: builds the VM, then runs queued jobs one at a time until every handle is
//! gone.

use std::any::Any;
use std::cell::Cell;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use mlua::Lua;

use crate::core::queue::{Job, Queued, Shared};
use crate::core::slot::{Completer, Resolve, Slot};
use crate::core::token::CancelToken;
use crate::core::wait;
use crate::error::IsleError;
use crate::interrupt::{Armed, Interrupt};
use crate::lua_thread::current;
use crate::lua_thread::feed::{self, Feed, JobReport, Outcome};
use crate::lua_thread::guards;
use crate::lua_thread::loaders;
use crate::lua_thread::vm::{Collection, Vm, VmSource};
use crate::sandbox::{self, Isolation, Sandbox};

/// The user's `init` closure.
pub(crate) type Init = Box<dyn FnOnce(&Lua) -> mlua::Result<()> + Send>;

/// Everything the Lua thread needs to build its VM.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) source: VmSource,
    pub(crate) memory_limit: Option<usize>,
    /// The Lua thread's stack size, for the guards that check how much of it is left.
    pub(crate) stack_size: usize,
    pub(crate) chunk_cache: usize,
    pub(crate) allow_binary_chunks: bool,
    pub(crate) interrupt: Interrupt,
    /// A shared queue this thread also serves (a pool member's).
    pub(crate) feed: Option<Feed>,
    /// Whether LuaJIT's compiler may run.
    #[cfg(any(feature = "luajit", feature = "luajit52"))]
    pub(crate) jit: bool,
    /// What scripts may not do.
    pub(crate) sandbox: Option<Sandbox>,
    /// What a request sees of earlier ones.
    pub(crate) isolation: Isolation,
    /// The `task` library, if installed.
    pub(crate) tasks: Option<crate::lualib::TaskLibrary>,
    /// The depth limit of serde conversions.
    #[cfg(feature = "serde")]
    pub(crate) serde_depth: usize,
}

/// The Lua thread's state between jobs.
pub(crate) struct Worker {
    // Field order is drop order: the hook registration goes before the VM it points into.
    // The executor's context (shared by coroutine tasks, which are all dropped before the
    // worker) holds clones of both, and is still set when a panic escapes the executor and
    // the worker unwinds: it goes first, so that `armed` and `vm` drop the last clones, in
    // that order.
    /// Set while the Lua thread runs its async executor (for coroutine requests).
    #[cfg(feature = "tokio")]
    pub(crate) executor: Option<crate::lua_thread::executor::Executor>,
    /// The `task` library (its Lua functions go before the VM).
    pub(crate) tasks: Option<Rc<crate::lualib::Installed>>,
    pub(crate) armed: Rc<Armed>,
    pub(crate) vm: Vm,
    pub(crate) shared: Arc<Shared>,
    next_gen: Rc<Cell<u64>>,
    /// The shared queue this thread also serves, while it is connected.
    pub(crate) feed: Option<Feed>,
    /// Whether the job running now was claimed from the feed (and the claim not yet released).
    claimed: bool,
    /// Whether the VM has a memory limit.
    #[cfg(any(
        feature = "lua51",
        feature = "luajit",
        feature = "luajit52",
        feature = "luau"
    ))]
    memory_limited: bool,
}

impl Worker {
    fn new(
        setup: Setup,
        init: Init,
        shared: &Arc<Shared>,
        ready: Arc<Slot<()>>,
        prepared: Option<Box<dyn Any>>,
    ) -> Result<Worker, (IsleError, Option<Box<Worker>>)> {
        // The VM and the isle's own machinery, and the library tables to seal after `init`.
        let build = || -> Result<(Worker, Option<mlua::Table>), IsleError> {
            guards::record_stack(setup.stack_size);
            let lua = setup.source.create(prepared)?;
            if let Some(limit) = setup.memory_limit {
                lua.set_memory_limit(limit)?;
            }
            crate::lua_thread::call::install(&lua)?;
            #[cfg(feature = "serde")]
            lua.set_app_data(crate::convert::serde::SerdeDepth(setup.serde_depth));
            if !setup.allow_binary_chunks {
                loaders::forbid_binary_chunks(&lua)?;
            }
            #[cfg(any(feature = "luajit", feature = "luajit52"))]
            if !setup.jit {
                crate::interrupt::turn_off_jit(&lua)?;
            }
            let armed = Armed::install(&lua, shared.interrupter.clone(), setup.interrupt)?;
            // Last: the guards wrap the functions the interrupt machinery replaced too.
            guards::install(&lua)?;
            // On top of the interrupt machinery's coroutine functions; under the sandbox.
            let tasks = match &setup.tasks {
                Some(config) => Some(Rc::new(crate::lualib::install(
                    &lua,
                    config,
                    &shared.interrupter,
                )?)),
                None => None,
            };
            if let Some(sandbox) = &setup.sandbox {
                sandbox::restrict(&lua, sandbox)?;
            }
            let sealing = setup.sandbox.is_some() || setup.isolation != Isolation::Shared;
            let libraries = match sealing {
                true => Some(sandbox::library_tables(&lua)?),
                false => None,
            };
            let worker = Worker {
                #[cfg(feature = "tokio")]
                executor: None,
                tasks,
                armed: Rc::new(armed),
                vm: Vm::new(lua, setup.chunk_cache),
                shared: shared.clone(),
                next_gen: Rc::new(Cell::new(1)),
                feed: setup.feed,
                claimed: false,
                #[cfg(any(
                    feature = "lua51",
                    feature = "luajit",
                    feature = "luajit52",
                    feature = "luau"
                ))]
                memory_limited: setup.memory_limit.is_some(),
            };
            Ok((worker, libraries))
        };
        let (mut worker, libraries) = catch_unwind(AssertUnwindSafe(build))
            .unwrap_or_else(|panic| Err(IsleError::Panic(panic_message(&*panic))))
            .map_err(|err| (err, None))?;
        // The user's code: a VM it leaves unusable is closed by the caller, like any other.
        let run_init = || -> Result<(), IsleError> {
            // `init` runs like a request: under the isle's default deadline.
            let deadline = shared.default_timeout.and_then(wait::deadline_after);
            let gen = worker.next_generation();
            worker.armed.begin(gen, deadline);
            shared.request_started(ready, deadline);
            let result = init(worker.vm.lua());
            let ended = worker.end_tasks_armed();
            let mut libraries = libraries;
            let seal = |worker: &Worker, libraries| {
                sandbox::seal(
                    worker.vm.lua(),
                    setup.sandbox.as_ref(),
                    setup.isolation,
                    Some(libraries),
                    setup.memory_limit,
                    worker.tasks.as_ref().map(|tasks| tasks.host_ends()),
                )
            };
            // Sealing runs Lua too, and its allocations may run finalizers `init` left: under
            // `init`'s deadline (unless `init`'s tasks were cut short, which fails it anyway).
            let sealed = match (ended && result.is_ok(), libraries.take()) {
                (true, Some(tables)) => Some(seal(&worker, tables)),
                (_, tables) => {
                    libraries = tables;
                    None
                }
            };
            worker.armed.end();
            worker.end_tasks_stopped(ended);
            shared.request_ended();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(IsleError::Timeout);
            }
            result?;
            let sealed = match (sealed, libraries) {
                (Some(sealed), _) => Some(sealed?),
                (None, Some(tables)) => Some(seal(&worker, tables)?),
                (None, None) => None,
            };
            if let Some(sealed) = sealed {
                worker.vm.seal(sealed);
            }
            Ok(())
        };
        match catch_unwind(AssertUnwindSafe(run_init)) {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(err)) => Err((err, Some(Box::new(worker)))),
            Err(panic) => Err((
                IsleError::Panic(panic_message(&*panic)),
                Some(Box::new(worker)),
            )),
        }
    }

    pub(crate) fn next_generation(&self) -> u64 {
        let gen = self.next_gen.get();
        self.next_gen.set(gen + 1);
        gen
    }

    /// The generation counter, shared with coroutine tasks.
    #[cfg(feature = "tokio")]
    pub(crate) fn generations(&self) -> Rc<Cell<u64>> {
        self.next_gen.clone()
    }
}

/// The body of an isle's Lua thread; `prepared` is what the thread made for it while it
/// waited (see [`VmSource::preparation`]).
pub(crate) fn run(
    setup: Setup,
    init: Init,
    shared: Arc<Shared>,
    rx: Receiver<Queued>,
    ready: Completer<()>,
    prepared: Option<Box<dyn Any>>,
) {
    wait::set_isle_id(shared.id);
    // Whatever way this thread ends, nothing queued is left unresolved.
    let exit = ExitGuard { shared: &shared };
    let mut worker = match Worker::new(setup, init, &shared, ready.slot(), prepared) {
        Ok(worker) => worker,
        Err((err, worker)) => {
            // As for a shutdown: the isle is closed before its VM is (a finalizer waiting for
            // the isle's end sees it).
            drop(exit);
            if let Some(worker) = worker {
                // The finalizers of what `init` made run as the VM closes: bounded like any
                // close, and a give-up resolves the `spawn` waiting for `init` (with
                // `Timeout`), which then does not wait for the thread.
                let _ = worker.vm.lua().set_memory_limit(0);
                worker.close(Some(ready.slot()));
            }
            return ready.complete(Err(err));
        }
    };
    ready.complete(Ok(()));
    // Whoever spawned the isle is waiting for it and, if it shares this core, can only take
    // it once this thread gives way: before polling for the first request (unless work is
    // already waiting, which the yield would only delay).
    let work_waiting = !rx.is_empty() || worker.feed.as_ref().is_some_and(|f| !f.is_empty());
    if !work_waiting {
        std::thread::yield_now();
    }

    // Serve on this thread until the first coroutine request; from then on (if ever), inside
    // an async executor that also drives the coroutines.
    #[cfg_attr(not(feature = "tokio"), allow(clippy::never_loop))]
    while let Some(first) = serve(&mut worker, &rx) {
        #[cfg(feature = "tokio")]
        if crate::lua_thread::executor::serve(&mut worker, &rx, first) {
            break;
        }
        #[cfg(not(feature = "tokio"))]
        drop(first);
    }
    // Refuse and resolve late submissions before closing the VM, whose finalizers may run long.
    drop(exit);
    // Finalizers run as the VM closes: lift the memory limit so that they do not fail for
    // lack of memory (Lua 5.2 mishandles the stack when many finalizers fail while closing).
    let _ = worker.vm.lua().set_memory_limit(0);
    worker.close(None);
}

/// Serves plain requests on this thread. Returns the first request that needs the async
/// executor, or `None` once the isle is done.
fn serve(worker: &mut Worker, rx: &Receiver<Queued>) -> Option<Queued> {
    while let Some(taken) = feed::next_job(rx, &mut worker.feed, &worker.shared.kill_alarm) {
        if taken.job.needs_executor() {
            if taken.from_feed {
                if let Some(feed) = &worker.feed {
                    feed.gate().release();
                }
            }
            return Some(taken.job);
        }
        if handle_job(worker, rx, taken.job, taken.from_feed).is_break() {
            break;
        }
    }
    None
}

/// Runs one job taken from the queue; `Break` when the Lua thread has to stop serving.
pub(crate) fn handle_job(
    worker: &mut Worker,
    rx: &Receiver<Queued>,
    job: Queued,
    from_feed: bool,
) -> ControlFlow<()> {
    let shared = worker.shared.clone();
    #[cfg(feature = "tokio")]
    shared.room.notify(1);
    if shared.interrupter.is_killed() {
        // Killed (a shutdown that ran out of time): nothing more runs, and handles may still
        // exist, so waiting for the queue to disconnect could wait forever.
        drop(job);
        return ControlFlow::Break(());
    }
    #[cfg(test)]
    crate::core::pause::at(crate::core::pause::Window::JobStart);
    worker.claimed = from_feed;
    job.run(worker);
    if shared.is_abandoned() {
        // Given up on while stuck in that job: leave without touching the queue again.
        return ControlFlow::Break(());
    }
    // Every job taken (run or not: cancelled while queued, a wake-up, a release message) is
    // followed by freeing what function handles gave back, so a release needs no message of
    // its own while jobs are queued.
    worker.vm.release_functions();
    let claimed = std::mem::take(&mut worker.claimed);
    if let Some(feed) = &worker.feed {
        if claimed {
            feed.gate().release();
        }
        feed.gate().between_jobs();
    }
    // A closed thread still serves an open feed until it is empty.
    let feed_done = worker
        .feed
        .as_ref()
        .is_none_or(|feed| !feed.gate().open() || feed.is_empty());
    if shared.is_closed() && rx.is_empty() && worker.idle() && feed_done {
        // Closed while handles still exist (an async driver's shutdown): what was accepted
        // is done. Late senders drain their own jobs once this thread is gone.
        return ControlFlow::Break(());
    }
    #[cfg(test)]
    crate::core::pause::at(crate::core::pause::Window::JobEnded);
    ControlFlow::Continue(())
}

impl Worker {
    /// Closes the VM. Lua runs the scripts' finalizers meanwhile, with hooks off: with a
    /// default timeout, the close runs under that deadline like a request, so that a finalizer
    /// that never returns ends in a hard stop (the isle gives up on this thread) instead of
    /// holding up a shutdown forever. `waiting` is resolved by a give-up (see
    /// [`Shared::closing_started`]).
    fn close(self, waiting: Option<Arc<dyn Resolve>>) {
        let shared = self.shared.clone();
        let gen = self.next_generation();
        // In field order, as dropping the worker would; the interrupt machinery goes before
        // the close is published, so that nothing is delivered into a VM being freed.
        let Worker {
            #[cfg(feature = "tokio")]
            executor,
            tasks,
            armed,
            vm,
            ..
        } = self;
        #[cfg(feature = "tokio")]
        drop(executor);
        drop(tasks);
        drop(armed);
        // Withdrawn however the close ends: a panic out of a `Drop` as the VM closes ends the
        // thread, which must not be given up on afterwards.
        struct Closing<'a>(&'a Arc<Shared>);
        impl Drop for Closing<'_> {
            fn drop(&mut self) {
                self.0.closing_ended();
            }
        }
        let closing = shared
            .default_timeout
            .and_then(wait::deadline_after)
            .map(|deadline| {
                shared.closing_started(gen, deadline, waiting);
                Closing(&shared)
            });
        drop(vm);
        #[cfg(test)]
        crate::core::pause::at(crate::core::pause::Window::VmClosed);
        drop(closing);
    }

    /// Ends the `task` scope of the request that just ran, while it is still the running
    /// request; `false` if that was cut short (see [`end_tasks_stopped`](Self::end_tasks_stopped)).
    pub(crate) fn end_tasks_armed(&self) -> bool {
        self.tasks.as_ref().is_none_or(|tasks| tasks.end_request())
    }

    /// Finishes what [`end_tasks_armed`](Self::end_tasks_armed) could not, after the request
    /// stopped being the running one.
    pub(crate) fn end_tasks_stopped(&self, ended: bool) {
        if !ended {
            if let Some(tasks) = &self.tasks {
                tasks.end_stopped(self.vm.lua());
            }
        }
    }

    /// Whether no coroutine request is in progress.
    pub(crate) fn idle(&self) -> bool {
        #[cfg(feature = "tokio")]
        if let Some(executor) = &self.executor {
            return executor.active() == 0;
        }
        true
    }
}

struct ExitGuard<'a> {
    shared: &'a Shared,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.shared.close_and_drain();
    }
}

/// A request: run its work on the VM and resolve its slot with the outcome.
impl<T, W> Job for Slot<T, W>
where
    T: Send + 'static,
    W: FnOnce(&mut Vm) -> Result<T, IsleError> + Send + 'static,
{
    fn run(self: Arc<Self>, worker: &mut Worker, token: CancelToken, deadline: Option<Instant>) {
        let gen = worker.next_generation();
        let Some(work) = self.start(gen, &worker.shared.interrupter) else {
            // Cancelled or expired while queued: already resolved, never started.
            return;
        };
        #[cfg(feature = "tracing")]
        let _entered = self.trace.start(worker.shared.id).entered();
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
        let outcome = outcome(&worker.shared, &token, deadline, result);
        // What the request left in its environment is garbage from here on; the memory the
        // pool's report gives is what remains after that. Collecting it may run finalizers
        // that scripts set (with hooks off): then the request stays the running one meanwhile,
        // so that a finalizer that never returns ends in a hard stop that resolves it, as one
        // run by the request itself would. (Its outcome is decided already.)
        let ended = worker.end_tasks_armed();
        let collection = worker.vm.after_request();
        if collection == Collection::MayRunScripts {
            worker.vm.collect();
        }
        worker.armed.end();
        worker.end_tasks_stopped(ended);
        // A large heap takes a while to collect (a hundred milliseconds for 64 MiB of small
        // strings), time that must not look like a request that will not stop.
        if collection == Collection::HostOnly {
            worker.vm.collect();
        }
        worker.shared.request_ended();
        // Reported before the caller can see the result: whatever the report decides (a pool
        // retiring this thread, say) holds by the time the caller makes its next request.
        if let Some(feed) = &worker.feed {
            feed.gate().finished(&JobReport {
                outcome: Outcome::of(&outcome),
                memory: worker.vm.lua().used_memory(),
            });
            // Free before the caller sees the result, so that its next request finds the
            // thread idle.
            if std::mem::take(&mut worker.claimed) {
                feed.gate().release();
            }
        }
        // Lua 5.1, LuaJIT and Luau do not collect garbage before reporting that an allocation
        // failed, so what a failed request left behind could make the next one fail too.
        #[cfg(any(
            feature = "lua51",
            feature = "luajit",
            feature = "luajit52",
            feature = "luau"
        ))]
        let collect = outcome.is_err() && worker.memory_limited;
        self.complete(outcome);
        #[cfg(any(
            feature = "lua51",
            feature = "luajit",
            feature = "luajit52",
            feature = "luau"
        ))]
        if collect {
            let _ = worker.vm.lua().gc_collect();
        }
    }
}

/// What a request that ran reports: a cancel, a passed deadline or a kill wins over whatever
/// the code did with the interruption.
pub(crate) fn outcome<T>(
    shared: &Shared,
    token: &CancelToken,
    deadline: Option<Instant>,
    result: std::thread::Result<Result<T, IsleError>>,
) -> Result<T, IsleError> {
    // A kill also cancels the running request's token: it reports as a kill.
    if shared.interrupter.is_killed() {
        Err(IsleError::Shutdown)
    } else if token.is_cancelled() {
        Err(IsleError::Cancelled)
    } else if deadline.is_some_and(|d| Instant::now() >= d) {
        Err(IsleError::Timeout)
    } else {
        result.unwrap_or_else(|panic| Err(IsleError::Panic(panic_message(&*panic))))
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    use crate::core::pause::{self, Window};
    use crate::{Isle, IsleError};

    /// How long a test waits for anything before it fails instead of hanging.
    const HANG_GUARD: Duration = Duration::from_secs(10);

    /// An isle on a thread named `name` with `wait_for_cancel()` (returns once its request's
    /// token is cancelled) and `started()`, and a grace period far beyond the hang guard, so
    /// that a thread that does not end shows as a failed wait, not as a hard stop.
    fn isle(name: &str) -> (Isle, std::sync::mpsc::Receiver<()>) {
        let (tx, started) = channel();
        let isle = Isle::builder()
            .thread_name(name)
            .grace_period(Duration::from_secs(60))
            .spawn(move |lua| {
                let wait = lua.create_function(|_, ()| {
                    while crate::checkpoint().is_ok() {
                        std::thread::yield_now();
                    }
                    Ok(())
                })?;
                lua.globals().set("wait_for_cancel", wait)?;
                let started = lua.create_function(move |_, ()| Ok(tx.send(()).is_ok()))?;
                lua.globals().set("started", started)
            })
            .unwrap();
        (isle, started)
    }

    /// Asserts that the killed isle's thread ends on its own (not given up on), though
    /// handles still exist.
    fn assert_thread_ends(shared: &crate::core::queue::Shared) {
        assert!(
            shared
                .exited
                .wait_long_until(Some(Instant::now() + HANG_GUARD)),
            "the killed thread kept waiting on a queue its handles keep open"
        );
        assert!(!shared.is_abandoned());
    }

    /// A kill whose drain empties the queue after the Lua thread finished the killed request
    /// and found the isle still open: the thread must still end, though handles exist (it
    /// used to block on the queue until the last handle went, and the kill ended `Abandoned`).
    #[test]
    fn a_kill_draining_the_queue_after_the_killed_request_ends_the_thread() {
        let name = "race-job-ended";
        let (isle, started) = isle(name);
        let shared = isle.shared_state().clone();
        let paused = pause::arm(Window::JobEnded, name);
        let stuck = isle
            .spawn_eval::<()>("started() wait_for_cancel()")
            .unwrap();
        started.recv_timeout(HANG_GUARD).unwrap();
        let queued: Vec<_> = (0..3)
            .map(|_| isle.spawn_eval::<()>("return").unwrap())
            .collect();
        // The kill ends the running request; the thread stops after it, the queue still full.
        shared.kill();
        paused.reached();
        shared.close_and_drain();
        paused.release();
        assert_thread_ends(&shared);
        assert!(matches!(stuck.wait(), Err(IsleError::Shutdown)));
        for task in queued {
            assert!(matches!(task.wait(), Err(IsleError::Shutdown)));
        }
        drop(isle);
    }

    /// A kill of an idle isle, with no message in its queue to wake its thread (a drain may
    /// take one before the thread does): the thread ends, though handles exist.
    #[test]
    fn a_kill_ends_an_idle_thread_with_nothing_queued() {
        let (isle, _started) = isle("kill-idle");
        assert_eq!(isle.eval::<i64>("return 1 + 1").unwrap(), 2);
        let shared = isle.shared_state().clone();
        shared.kill();
        assert_thread_ends(&shared);
        assert!(matches!(
            isle.eval::<()>("return"),
            Err(IsleError::Shutdown)
        ));
    }

    /// The same for a thread serving coroutine requests, killed as its async executor, idle
    /// after a coroutine request, is about to block waiting for a job.
    #[cfg(feature = "tokio")]
    #[test]
    fn a_kill_ends_an_idle_thread_serving_coroutines() {
        let name = "kill-idle-executor";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The first wait is the plain server's, before any request.
        let plain = pause::arm(Window::WaitingForJob, name);
        let (isle, driver) = runtime
            .block_on(
                crate::AsyncIsle::builder()
                    .thread_name(name)
                    .spawn_async(|_| Ok(())),
            )
            .unwrap();
        plain.reached();
        // The next one is the executor's, once the coroutine request is done.
        let executor = pause::arm(Window::WaitingForJob, name);
        plain.release();
        let sum = runtime.block_on(isle.coroutine_eval::<i64>("return 1 + 1"));
        assert_eq!(sum.unwrap(), 2);
        executor.reached();
        let shared = isle.shared().clone();
        shared.kill();
        executor.release();
        assert_thread_ends(&shared);
        drop(driver);
    }
}
