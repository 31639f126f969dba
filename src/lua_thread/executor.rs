//! The Lua thread's async executor (`tokio` feature), started with the first coroutine
//! request.
//!
//! A coroutine request runs its Lua code as a coroutine that may call async Rust functions
//! (`Lua::create_async_function`). While it awaits one, the Lua thread serves other requests
//! and other coroutines. To that end the thread runs a current-thread tokio runtime (timers
//! and, if tokio's `net`/`fs` features are on in the application, I/O) with a `LocalSet`:
//! the queue is served by one local task, which runs plain requests to completion in turn, and
//! every coroutine request is another local task. Async host functions can therefore use
//! tokio's timers, I/O and channels directly.
//!
//! Each time a coroutine task resumes its coroutine it runs as a request of its own
//! generation, so cancellation, deadlines and the hard stop work as for plain requests; while
//! it is suspended, a cancel, a passed deadline or the isle being killed completes the task at
//! once, dropping the coroutine and the Rust future it was awaiting.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::core::queue::{Job, Queued, Shared, Wakeup};
use crate::core::slot::{Resolve, Slot};
use crate::core::token::{CancelToken, Cancellation};
use crate::core::wait;
use crate::core::watchdog::Sleep;
use crate::error::IsleError;
use crate::interrupt::{self, Armed};
use crate::lua_thread::call;
use crate::lua_thread::current;
use crate::lua_thread::feed::{self, Feed, Polled, Taken};
use crate::lua_thread::vm::Vm;
use crate::lua_thread::worker::{self, Worker};

/// The future driving one coroutine on the VM.
pub(crate) type LuaFuture<T> = Pin<Box<dyn Future<Output = mlua::Result<T>>>>;

/// The work of a coroutine request: creates its coroutine on the VM.
pub(crate) struct Coroutine<S>(pub(crate) S);

/// What coroutine tasks share with the Lua thread.
struct Context_ {
    // Field order is drop order: should this hold the last clones, the interrupt registration
    // must go before the VM it points into.
    armed: Rc<Armed>,
    lua: mlua::Lua,
    shared: Arc<Shared>,
    generations: Rc<Cell<u64>>,
    /// Coroutine requests in progress.
    active: Cell<usize>,
    /// Notified when `active` drops to 0.
    idle: Wakeup,
    /// The pool member's gate, told when each coroutine request ends (as plain requests tell
    /// it), so that its recycling policy and counters see them.
    gate: Option<Arc<dyn feed::FeedGate>>,
}

impl Context_ {
    /// Tells the pool member's gate (if any) how a coroutine request ended, before its caller
    /// can see the result, as plain requests do.
    fn report<T>(&self, result: &Result<T, IsleError>) {
        if let Some(gate) = &self.gate {
            gate.finished(&feed::JobReport {
                outcome: feed::Outcome::of(result),
                memory: self.lua.used_memory(),
            });
        }
    }

    /// Resolves a coroutine request that failed to start (its code did not compile, its
    /// function does not exist, ...): it counts as a request that ran, as for plain ones.
    fn end_early<T>(&self, slot: &Slot<T, Coroutine<impl Send>>, result: Result<T, IsleError>)
    where
        T: Send,
    {
        self.report(&result);
        slot.complete(result);
    }

    fn next_generation(&self) -> u64 {
        let gen = self.generations.get();
        self.generations.set(gen + 1);
        gen
    }
}

/// The executor's handle, kept in the [`Worker`] while it runs.
pub(crate) struct Executor {
    context: Rc<Context_>,
}

impl Executor {
    /// Coroutine requests in progress.
    pub(crate) fn active(&self) -> usize {
        self.context.active.get()
    }
}

/// Serves the queue inside an async executor, starting with `first`. Returns `true` once the
/// isle is done, `false` if the executor could not be started (`first` is then resolved with
/// the error and plain serving resumes).
pub(crate) fn serve(worker: &mut Worker, rx: &Receiver<Queued>, first: Queued) -> bool {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            first.fail(IsleError::Spawn(err));
            return false;
        }
    };
    let local = tokio::task::LocalSet::new();
    worker.executor = Some(Executor {
        context: Rc::new(Context_ {
            armed: worker.armed.clone(),
            lua: worker.vm.lua().clone(),
            shared: worker.shared.clone(),
            generations: worker.generations(),
            active: Cell::new(0),
            idle: Wakeup::default(),
            gate: worker.feed.as_ref().map(Feed::shared_gate),
        }),
    });
    local.block_on(&runtime, main_loop(worker, rx, first));
    // Coroutine tasks still alive (the isle was given up on) are dropped here, before the VM.
    drop(local);
    drop(runtime);
    worker.executor = None;
    true
}

/// The local task that serves the queue.
async fn main_loop(worker: &mut Worker, rx: &Receiver<Queued>, first: Queued) {
    let shared = worker.shared.clone();
    let mut next = Some(Taken {
        job: first,
        from_feed: false,
    });
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match next_job(worker, rx).await {
                Some(taken) => taken,
                None => break,
            },
        };
        if worker::handle_job(worker, rx, job.job, job.from_feed).is_break() {
            return;
        }
        if worker.executor.as_ref().is_some_and(|e| e.active() > 0) {
            // Let the coroutines (and their timers and I/O) move between plain requests.
            tokio::task::yield_now().await;
        }
    }
    // No handle is left: finish the coroutine requests in progress.
    let context = worker.executor.as_ref().map(|e| e.context.clone());
    if let Some(context) = context {
        while context.active.get() > 0 && !shared.is_abandoned() {
            let idle = context.idle.listen();
            if context.active.get() == 0 {
                break;
            }
            idle.await;
        }
    }
}

/// The next job (from the own queue, or from the feed while the gate is open), letting the
/// other local tasks run while there is none; `None` once every sender is gone and nothing is
/// left for this thread.
async fn next_job(worker: &mut Worker, rx: &Receiver<Queued>) -> Option<Taken> {
    let shared = worker.shared.clone();
    let start = Instant::now();
    loop {
        match feed::poll_next(rx, &mut worker.feed) {
            Polled::Job(taken) => return Some(taken),
            Polled::Done => return None,
            Polled::Empty => {}
        }
        let feed_done = worker
            .feed
            .as_ref()
            .is_none_or(|feed| !feed.gate().open() || feed.is_empty());
        if (shared.is_closed() || shared.interrupter.is_killed()) && worker.idle() && feed_done {
            // Shut down (or killed) and nothing left in progress.
            return None;
        }
        if worker.idle() {
            // No coroutine needs this thread meanwhile: wait as the plain server does.
            return feed::next_job(rx, &mut worker.feed, &shared.kill_alarm);
        }
        if start.elapsed() < wait::SPIN_BUDGET {
            tokio::task::yield_now().await;
            continue;
        }
        // Senders notify after queueing (and the last handle after disconnecting): listen,
        // then look again, so that nothing sent in between is missed.
        // The feed's arrivals matter only while this thread may take from it: a closed gate
        // must not swallow a wake-up meant for another member.
        let signals = worker
            .feed
            .as_ref()
            .filter(|feed| feed.gate().open())
            .map(Feed::signals);
        let arrived = shared.arrived.listen();
        let mut fed = signals.as_ref().map(|signals| signals.arrived.listen());
        match feed::poll_next(rx, &mut worker.feed) {
            Polled::Job(taken) => return Some(taken),
            Polled::Done => return None,
            Polled::Empty => {
                let mut arrived = std::pin::pin!(arrived);
                std::future::poll_fn(|cx| {
                    let fed_ready = fed
                        .as_mut()
                        .is_some_and(|fed| Pin::new(fed).poll(cx).is_ready());
                    if fed_ready || arrived.as_mut().poll(cx).is_ready() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
        }
    }
}

/// A coroutine request: start its coroutine on the VM, then hand it to a local task.
impl<T, S> Job for Slot<T, Coroutine<S>>
where
    T: Send + 'static,
    S: FnOnce(&mut Vm) -> Result<LuaFuture<T>, IsleError> + Send + 'static,
{
    fn run(self: Arc<Self>, worker: &mut Worker, token: CancelToken, deadline: Option<Instant>) {
        let gen = worker.next_generation();
        let Some(Coroutine(start)) = self.start(gen, &worker.shared.interrupter) else {
            return;
        };
        #[cfg(feature = "tracing")]
        let span = self.trace.start(worker.shared.id);
        #[cfg(feature = "tracing")]
        let _entered = span.enter();
        if token.is_cancelled() {
            self.complete(Err(IsleError::Cancelled));
            return;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.complete(Err(IsleError::Timeout));
            return;
        }
        let Some(executor) = &worker.executor else {
            self.complete(Err(IsleError::Shutdown));
            return;
        };
        let context = executor.context.clone();
        // Creating the coroutine runs no Lua code.
        let future = match catch_unwind(AssertUnwindSafe(|| start(&mut worker.vm))) {
            Ok(Ok(future)) => future,
            Ok(Err(err)) => return context.end_early(&self, Err(err)),
            Err(panic) => {
                let message = worker::panic_message(&*panic);
                return context.end_early(&self, Err(IsleError::Panic(message)));
            }
        };
        context.active.set(context.active.get() + 1);
        let key = context.shared.coroutine_started(self.clone());
        let task = CoroutineTask {
            key,
            coroutine: None,
            slot: self,
            future: Some(future),
            token,
            deadline,
            context,
            cancelled: None,
            killed: None,
            expiry: None,
            interrupted: false,
        };
        // Every stretch of the request runs inside its span.
        #[cfg(feature = "tracing")]
        let task = tracing::Instrument::instrument(task, span.clone());
        tokio::task::spawn_local(task);
    }

    fn needs_executor(&self) -> bool {
        true
    }
}

/// The local task of one coroutine request.
struct CoroutineTask<T, S> {
    /// The request's key among the isle's coroutine requests in progress.
    key: usize,
    /// The request's coroutine, once it has been resumed.
    coroutine: Option<mlua::Thread>,
    slot: Arc<Slot<T, Coroutine<S>>>,
    /// `None` once the request is resolved.
    future: Option<LuaFuture<T>>,
    token: CancelToken,
    deadline: Option<Instant>,
    context: Rc<Context_>,
    // Wake-ups while the coroutine is suspended.
    cancelled: Option<Cancellation>,
    killed: Option<Cancellation>,
    expiry: Option<Pin<Box<Sleep>>>,
    /// Whether an interrupt suspended the coroutine in the middle of Lua code.
    interrupted: bool,
}

impl<T, S> CoroutineTask<T, S>
where
    T: Send + 'static,
    S: Send + 'static,
{
    /// Why the request must end now, if it must.
    fn stop(&self) -> Option<IsleError> {
        if self.context.shared.interrupter.is_killed() {
            Some(IsleError::Shutdown)
        } else if self.token.is_cancelled() {
            Some(IsleError::Cancelled)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(IsleError::Timeout)
        } else {
            None
        }
    }

    /// Runs `f` as a stretch of the request with a generation of its own: interruptible, with
    /// its deadline published and the request visible to host functions. Returns `None` if
    /// the request was resolved meanwhile (the isle gave up on it).
    fn stretch<R>(&mut self, stopping: bool, f: impl FnOnce(&mut Self) -> R) -> Option<R> {
        let context = self.context.clone();
        let gen = context.next_generation();
        #[cfg(test)]
        crate::core::pause::at(crate::core::pause::Window::CoroutineStretch);
        if !self.slot.rerun(gen) {
            return None;
        }
        if stopping {
            // Dropping a suspended coroutine resumes it to unwind: make any Lua code it runs
            // stop at once.
            context.shared.interrupter.interrupt(gen);
        }
        // A stopping stretch needs no deadline of its own: the stop is pending already, and is
        // escalated a grace period from now if not obeyed (a passed deadline would escalate at
        // once).
        let deadline = if stopping { None } else { self.deadline };
        context.armed.begin(gen, deadline);
        context
            .shared
            .request_started(self.slot.clone() as Arc<dyn Resolve>, deadline);
        current::enter(self.token.clone(), self.deadline);
        call::coroutine_stretch(&context.lua);
        wait::set_in_coroutine(true);
        let result = f(self);
        wait::set_in_coroutine(false);
        let _ = current::leave();
        context.armed.end();
        context.shared.request_ended();
        Some(result)
    }

    /// Resolves the request with `result`, after dropping the coroutine (and so the Rust future
    /// it may be awaiting).
    ///
    /// A coroutine stopped before it finished is resumed by that drop to unwind and closed
    /// (running its `__close` handlers from Lua 5.4 on): that runs as an interrupted stretch
    /// with the interrupt armed on the coroutine itself, so no Lua code it runs can loop. If
    /// the interrupt had to cut that short, or suspended the coroutine in the middle of Lua
    /// code, or before Lua 5.4 (where nothing closes the stack of a coroutine that ended by an
    /// error), the coroutine still holds its values, the awaited future among them: a full
    /// collection after the stretch drops them at once rather than at some later cycle.
    /// Finalizers run with hooks off, so the interrupt does not cut them short.
    fn finish(&mut self, result: Result<T, IsleError>, finished: bool) {
        const CLOSES_STACKS: bool = cfg!(any(feature = "lua54", feature = "lua55"));
        let stopped = matches!(
            result,
            Err(IsleError::Cancelled | IsleError::Timeout | IsleError::Shutdown)
        );
        let coroutine = self.coroutine.take();
        if let Some(future) = self.future.take() {
            let mut collect = self.interrupted || (stopped && !CLOSES_STACKS);
            if finished {
                drop(coroutine);
                drop(future);
            } else {
                let cut_short = self.stretch(true, |_| {
                    let closed = catch_unwind(AssertUnwindSafe(move || {
                        interrupt::closing_armed(coroutine, || drop(future))
                    }));
                    // A panic while closing left the coroutine half closed.
                    closed.unwrap_or(true)
                });
                collect |= cut_short.unwrap_or(false);
            }
            if collect {
                let _ = self.context.lua.gc_collect();
            }
        }
        // What the request changed outside its environment (a sandbox's collected output,
        // collector settings, the random seed) does not reach later requests; the memory the
        // report gives is what remains after that.
        let collect = crate::sandbox::after_coroutine_request(&self.context.lua);
        if collect == crate::sandbox::Collect::Now {
            let _ = self.context.lua.gc_collect();
        }
        self.context.report(&result);
        self.slot.complete(result);
        if collect == crate::sandbox::Collect::Later {
            let _ = self.context.lua.gc_collect();
        }
    }

    /// Registers for the wake-ups that end a suspended request; `true` if one is due already.
    fn stop_due(&mut self, cx: &mut Context<'_>) -> bool {
        let cancelled = self.cancelled.get_or_insert_with(|| self.token.cancelled());
        if Pin::new(cancelled).poll(cx).is_ready() {
            return true;
        }
        let killed = self
            .killed
            .get_or_insert_with(|| self.context.shared.killed.cancelled());
        if Pin::new(killed).poll(cx).is_ready() {
            return true;
        }
        match self.deadline {
            Some(deadline) => self
                .expiry
                .get_or_insert_with(|| Box::pin(Sleep::until(deadline)))
                .as_mut()
                .poll(cx)
                .is_ready(),
            None => false,
        }
    }
}

impl<T, S> Future for CoroutineTask<T, S>
where
    T: Send + 'static,
    S: Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some(err) = this.stop() {
                this.finish(Err(err), false);
                return Poll::Ready(());
            }
            let polled = this.stretch(false, |this| {
                let future = this.future.as_mut().expect("polled only while unresolved");
                let _ = interrupt::take_yielded();
                let _ = interrupt::take_first_resumed();
                let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
                this.interrupted |= interrupt::take_yielded();
                // Always taken, so that no record keeps the coroutine from being collected.
                let resumed = interrupt::take_first_resumed();
                if this.coroutine.is_none() {
                    this.coroutine = resumed;
                }
                polled
            });
            let (result, finished) = match polled {
                // Resolved meanwhile (given up on).
                None => {
                    this.future = None;
                    return Poll::Ready(());
                }
                Some(Ok(Poll::Pending)) => {
                    if this.stop_due(cx) {
                        continue;
                    }
                    return Poll::Pending;
                }
                Some(Ok(Poll::Ready(result))) => {
                    let lua = &this.context.lua;
                    let result = result.map_err(|err| call::coroutine_failure(lua, err));
                    (Ok(result), true)
                }
                Some(Err(panic)) => (Err(panic), false),
            };
            let shared = this.context.shared.clone();
            let outcome = worker::outcome(&shared, &this.token, this.deadline, result);
            this.finish(outcome, finished);
            return Poll::Ready(());
        }
    }
}

impl<T, S> Drop for CoroutineTask<T, S> {
    fn drop(&mut self) {
        // Dropped unfinished (the executor is going away): still resolve the request.
        self.slot.complete(Err(IsleError::Shutdown));
        self.context.shared.coroutine_ended(self.key);
        let active = self.context.active.get() - 1;
        self.context.active.set(active);
        if active == 0 {
            self.context.idle.notify(usize::MAX);
            // The queue's server may be waiting for this to stop.
            self.context.shared.arrived.notify(usize::MAX);
        }
    }
}
