//! The OS threads isles run on, and the spare threads kept to start the next isle.
//!
//! Creating and joining an OS thread costs about as much as creating a Lua VM, and a pool
//! that recycles its VMs pays that for each one. So when an isle's thread has served its isle
//! (the VM closed, everything this crate kept for it on the thread reset), the thread stays
//! for a while as a *spare*: the next isle with the same thread name and stack size starts on
//! it, without a thread being created and joined. A spare that no isle takes within
//! [`SPARE_IDLE`] ends; at most [`MAX_SPARES`] are kept, and a new one pushes out the one
//! that has waited longest. Only a thread whose name came up before it was started waits:
//! isles named once (a name per session) would leave spares no isle takes.
//!
//! While it waits, a spare makes what its last isle's body asked for (its [`Preparation`]: the
//! next VM), which it hands to the next run; a run takes a spare that prepares what it can use
//! (the same key), else one that prepares nothing, else a new thread.
//!
//! On Linux, a spare shows the OS the name [`SPARE_NAME`] while it waits (so that it is not
//! taken for an isle's thread in `/proc` or a debugger), and takes its isle's name back when
//! it serves again. The name Rust sees (`std::thread::current().name()`) is the one it was
//! started with, which is why only isles with the same name reuse it.
//!
//! [`IsleThread`] stands for one isle's run on a thread. Joining it waits until the isle's
//! body has returned and the thread has let go of the isle: it has become a spare, or is
//! about to end. A thread whose body says it must not be reused (a panic escaped it, or its
//! isle had given up on it by the time it was done) ends instead.

use std::any::Any;
use std::collections::hash_map::DefaultHasher;
use std::ffi::{CStr, CString};
use std::hash::{Hash, Hasher};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// How long a spare thread waits for another isle before it ends.
pub(crate) const SPARE_IDLE: Duration = Duration::from_secs(1);

/// How many spare threads are kept at most.
pub(crate) const MAX_SPARES: usize = 16;

/// The name a spare thread shows the OS while it waits.
pub(crate) const SPARE_NAME: &CStr = c"isle-spare";

/// What an isle runs on its thread, given what the thread prepared for it while it waited.
type Body = Box<dyn FnOnce(Prepared) -> AfterRun + Send>;

/// What a waiting thread made ahead of time for the next isle on it (a VM): the next isle's
/// body takes it if it can use it, and drops it otherwise.
pub(crate) type Prepared = Option<Box<dyn Any>>;

/// What a waiting thread makes for the next isle on it.
pub(crate) struct Preparation {
    /// Tells what it makes apart: only a run that can use it (given the same key) takes the
    /// thread.
    pub(crate) key: String,
    pub(crate) make: Box<dyn FnOnce() -> Prepared>,
}

/// What an isle's thread does once the isle's body has returned.
pub(crate) enum AfterRun {
    /// It ends: it is not fit to serve another isle.
    End,
    /// It waits as a spare, first running the preparation, if any, for the next isle.
    Wait(Option<Preparation>),
}

/// One isle's run, as handed to a thread.
struct Run {
    body: Body,
    /// Told (or dropped) once the thread has let go of the isle.
    ended: Sender<()>,
}

/// A waiting spare thread, as the list of spares holds it. Dropping it (a spare pushed out)
/// ends the thread.
struct Spare {
    name: String,
    stack_size: usize,
    /// Tells this spare apart from the others.
    serial: u64,
    /// The key of what it prepares, if anything: then only a run with that key takes it.
    prepares: Option<String>,
    runs: Sender<Run>,
}

/// The spares of one process, the one that has waited longest first.
struct SpareList {
    /// The process that made the list: its id, and how many forks it descends from.
    pid: u32,
    forks: u64,
    spares: Mutex<Spares>,
}

/// The spares, and the names threads were asked for lately.
#[derive(Default)]
struct Spares {
    /// The one that has waited longest first.
    waiting: Vec<Spare>,
    /// The names and stack sizes runs were started with, as hashes in [`NAMES_REMEMBERED`]
    /// slots (each pair has one; a newer pair in the same slot replaces it): a thread waits
    /// as a spare only if its name came up before, so that isles named once (a name per
    /// session, say) do not leave spares that no isle takes. A name used once pushes out at
    /// most one other, so a name that recurs is still known after thousands of names used
    /// once came up in between (unless one of them took its slot: 1 chance in 4096 each).
    asked: Vec<u64>,
}

/// How many slots [`Spares::asked`] has.
const NAMES_REMEMBERED: usize = 4096;

/// The spares of this process. A child forked since the list was made has none of its
/// threads, and its lock may have been held by one of them as the child was forked: the
/// child makes a list of its own and leaves the parent's as it is (never freed, nor locked).
/// A child is told apart by its process id and, where fork handlers exist, by its count of
/// forks ([`FORKS`]): a child in a new pid namespace, or one whose id an ancestor had, can
/// have the id of the process that made the list.
static SPARES: AtomicPtr<SpareList> = AtomicPtr::new(std::ptr::null_mut());

/// How many forks this process descends from, counted from the first look at the spares.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Run in each child a fork makes (registered with `pthread_atfork`).
#[cfg(any(target_os = "linux", target_os = "android"))]
extern "C" fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Counts forks from now on (once per process and its children).
fn count_forks() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        static REGISTERED: std::sync::Once = std::sync::Once::new();
        REGISTERED.call_once(|| {
            // SAFETY: `forked` only adds to an atomic, which is sound in a freshly forked
            // child; a failed registration (no memory) leaves the process id check alone.
            unsafe { libc::pthread_atfork(None, None, Some(forked)) };
        });
    }
}

fn spares() -> MutexGuard<'static, Spares> {
    // Before any list exists: a child forked after that list was made counts one more fork.
    count_forks();
    let pid = std::process::id();
    let forks = FORKS.load(Ordering::Relaxed);
    let mut list = SPARES.load(Ordering::Acquire);
    loop {
        // SAFETY: lists are made below and never freed.
        if let Some(list) = unsafe { list.as_ref() } {
            if list.pid == pid && list.forks == forks {
                return list.spares.lock().unwrap_or_else(PoisonError::into_inner);
            }
        }
        let fresh = Box::into_raw(Box::new(SpareList {
            pid,
            forks,
            spares: Mutex::new(Spares::default()),
        }));
        match SPARES.compare_exchange(list, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => list = fresh,
            Err(current) => {
                // SAFETY: `fresh` was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                list = current;
            }
        }
    }
}

/// One isle's run on a thread, joined at most once; dropping it stops waiting for the run.
pub(crate) struct IsleThread(Option<Receiver<()>>);

impl IsleThread {
    /// Runs `body` on a spare thread named `name` with `stack_size` bytes of stack, or on a
    /// new one if there is none. `key` tells what preparation the run can use: a spare that
    /// prepares something else is not taken.
    ///
    /// `body` must not panic (the thread's owner would not learn of it): isles catch every
    /// panic on their thread and report it. It returns whether the thread is fit to serve
    /// another isle, and how to prepare for it.
    ///
    /// # Errors
    ///
    /// When a new thread is needed and the OS cannot start it, or `name` contains a NUL byte.
    pub(crate) fn spawn(
        name: String,
        stack_size: usize,
        key: Option<String>,
        body: impl FnOnce(Prepared) -> AfterRun + Send + 'static,
    ) -> io::Result<Self> {
        if name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a thread name must not contain a NUL byte",
            ));
        }
        let (ended, end) = crossbeam_channel::bounded(1);
        // A new thread inherits the signal mask of the thread that creates it: a spare takes
        // on this thread's too.
        #[cfg(unix)]
        let body = {
            let mask = signal_mask();
            move |prepared| {
                // SAFETY: sets the calling thread's mask to one `pthread_sigmask` filled in.
                unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) };
                body(prepared)
            }
        };
        let run = Run {
            body: Box::new(body),
            ended,
        };
        let Err((run, name_repeats)) = hand_to_spare(&name, stack_size, key.as_deref(), run) else {
            return Ok(IsleThread(Some(end)));
        };
        let thread = SpareThread {
            os_name: os_name(&name),
            name: name.clone(),
            stack_size,
            name_repeats,
        };
        thread::Builder::new()
            .name(name)
            .stack_size(stack_size)
            .spawn(move || thread.serve(run))?;
        Ok(IsleThread(Some(end)))
    }

    /// Waits up to `timeout` for the run to end. Returns whether it has (then any later call
    /// returns `true` at once).
    pub(crate) fn join_within(&mut self, timeout: Duration) -> bool {
        let Some(end) = &self.0 else {
            return true;
        };
        if let Err(RecvTimeoutError::Timeout) = end.recv_timeout(timeout) {
            return false;
        }
        self.0 = None;
        true
    }

    /// Waits for the run to end.
    ///
    /// # Blocking
    ///
    /// Until the isle's body has returned: only for a run known to end (its isle reported its
    /// end, or the caller accepts waiting for it as long as it runs).
    pub(crate) fn join(&mut self) {
        if let Some(end) = self.0.take() {
            let _ = end.recv();
        }
    }
}

impl std::fmt::Debug for IsleThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsleThread")
            .field("joined", &self.0.is_none())
            .finish()
    }
}

/// Hands `run` to the spare that waited least among those named `name` with `stack_size`
/// bytes of stack (its stack and caches are the warmest) that prepare what `key` names, or
/// else nothing; gives `run` back if there is none, with whether a run was asked for that
/// name and stack size lately (then its new thread is to wait as a spare when done).
fn hand_to_spare(
    name: &str,
    stack_size: usize,
    key: Option<&str>,
    run: Run,
) -> Result<(), (Run, bool)> {
    let mut spares = spares();
    let asked_before = spares.remember(name, stack_size);
    let last = |prepares: Option<&str>| {
        spares.waiting.iter().rposition(|spare| {
            spare.name == name
                && spare.stack_size == stack_size
                && spare.prepares.as_deref() == prepares
        })
    };
    let Some(at) = key.and_then(|key| last(Some(key))).or_else(|| last(None)) else {
        return Err((run, asked_before));
    };
    let spare = spares.waiting.remove(at);
    // Sent under the lock: a spare whose wait runs out meanwhile finds it (see `wait_for_run`).
    // The channel is empty (each one carries one run) and its thread waits on it.
    spare
        .runs
        .try_send(run)
        .map_err(|err| (err.into_inner(), true))
}

impl Spares {
    /// Notes that a run was asked for `name` and `stack_size`; returns whether one was before
    /// (as far as [`asked`](Self::asked) remembers).
    fn remember(&mut self, name: &str, stack_size: usize) -> bool {
        let mut hasher = DefaultHasher::new();
        (name, stack_size).hash(&mut hasher);
        // Never 0, which marks an empty slot.
        let hash = hasher.finish() | 1;
        if self.asked.is_empty() {
            self.asked = vec![0; NAMES_REMEMBERED];
        }
        // The high bits pick the slot; the whole hash tells the pairs in it apart.
        let slot = &mut self.asked[(hash >> 52) as usize % NAMES_REMEMBERED];
        std::mem::replace(slot, hash) == hash
    }
}

/// A thread that serves isles one after the other.
struct SpareThread {
    name: String,
    stack_size: usize,
    /// `name` as the OS shows it; `None` where threads are not renamed.
    os_name: Option<CString>,
    /// Whether runs were asked for its name before it was started: only then does it wait as
    /// a spare when done.
    name_repeats: bool,
}

impl SpareThread {
    fn serve(self, first: Run) {
        static SERIALS: AtomicU64 = AtomicU64::new(1);
        let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
        let mut run = first;
        let mut prepared = None;
        loop {
            let Run { body, ended } = run;
            let AfterRun::Wait(preparation) = body(prepared.take()) else {
                return;
            };
            if !self.name_repeats {
                // A name used once, as far as can be told: waiting would only keep a thread
                // (and a VM made for nothing) from ending.
                return;
            }
            set_os_name(SPARE_NAME);
            let next = self.offer(serial, preparation.as_ref().map(|p| p.key.clone()));
            // The isle is let go of: whoever waits for it may go on, and may start the next
            // isle on this very thread.
            drop(ended);
            // Meanwhile (a run handed over waits for it: it is what that run needs).
            prepared = preparation.and_then(|p| catch_unwind(AssertUnwindSafe(p.make)).ok()?);
            run = match wait_for_run(&next, serial) {
                Some(run) => run,
                None => return,
            };
            if let Some(name) = &self.os_name {
                set_os_name(name);
            }
        }
    }

    /// Adds this thread to the spares, pushing out the one that waited longest if there are
    /// too many. Returns where its next run comes.
    fn offer(&self, serial: u64, prepares: Option<String>) -> Receiver<Run> {
        let (runs, next) = crossbeam_channel::bounded(1);
        let pushed_out = {
            let mut spares = spares();
            let spares = &mut spares.waiting;
            let pushed_out = (spares.len() >= MAX_SPARES).then(|| spares.remove(0));
            spares.push(Spare {
                name: self.name.clone(),
                stack_size: self.stack_size,
                serial,
                prepares,
                runs,
            });
            #[cfg(test)]
            crate::core::pause::at(crate::core::pause::Window::SparesLocked);
            pushed_out
        };
        // Its thread sees the channel disconnect and ends.
        drop(pushed_out);
        next
    }
}

/// Waits for the next run of the spare `serial`; `None` when it is to end: no isle took it in
/// time, or it was pushed out.
fn wait_for_run(next: &Receiver<Run>, serial: u64) -> Option<Run> {
    match next.recv_timeout(SPARE_IDLE) {
        Ok(run) => return Some(run),
        Err(RecvTimeoutError::Disconnected) => return None,
        Err(RecvTimeoutError::Timeout) => {}
    }
    #[cfg(test)]
    crate::core::pause::at(crate::core::pause::Window::SpareExpiring);
    let mut spares = spares();
    // A run handed over since the wait ran out was sent under this lock: it is here now.
    if let Ok(run) = next.try_recv() {
        return Some(run);
    }
    spares.waiting.retain(|spare| spare.serial != serial);
    None
}

/// The calling thread's signal mask.
#[cfg(unix)]
fn signal_mask() -> libc::sigset_t {
    // SAFETY: `pthread_sigmask` with no new set only fills in `mask`, zeroed before.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        mask
    }
}

/// `name` as the OS keeps it: at most 15 bytes (Linux's limit, as the standard library cuts
/// it), for giving a spare its name back.
#[cfg(target_os = "linux")]
fn os_name(name: &str) -> Option<CString> {
    let bytes = &name.as_bytes()[..name.len().min(15)];
    CString::new(bytes).ok()
}

#[cfg(not(target_os = "linux"))]
fn os_name(_name: &str) -> Option<CString> {
    None
}

/// Shows the OS `name` (at most 15 bytes) for the calling thread, where threads are renamed.
#[cfg(target_os = "linux")]
fn set_os_name(name: &CStr) {
    // SAFETY: `name` is a NUL-terminated string of at most 15 bytes plus the NUL, which
    // `pthread_setname_np` copies; `pthread_self` names the calling thread.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
}

#[cfg(not(target_os = "linux"))]
fn set_os_name(_name: &CStr) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread::ThreadId;

    const HANG: Duration = Duration::from_secs(20);

    /// Makes `name` (with `stack_size`) a name that came up before: the next thread started
    /// for it waits as a spare when done.
    fn warm(name: &str, stack_size: usize) {
        run_on(name, stack_size, true);
    }

    /// Sends on `tx` when the calling thread ends (as a spare or not).
    fn tell_when_the_thread_ends(tx: mpsc::Sender<()>) {
        struct Ends(mpsc::Sender<()>);
        impl Drop for Ends {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        thread_local!(static ENDS: std::cell::RefCell<Option<Ends>> = const { std::cell::RefCell::new(None) });
        ENDS.set(Some(Ends(tx)));
    }

    /// What a body returns: the thread waits as a spare (preparing nothing), or ends.
    fn after(reusable: bool) -> AfterRun {
        match reusable {
            true => AfterRun::Wait(None),
            false => AfterRun::End,
        }
    }

    /// Taken by each test here: one of them fills the list of spares, which would push out
    /// the spares the others look for.
    fn alone() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a body on a thread named `name` that reports its id, and waits for the run.
    fn run_on(name: &str, stack_size: usize, reusable: bool) -> ThreadId {
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn(name.to_owned(), stack_size, None, move |_| {
            tx.send(thread::current().id()).unwrap();
            after(reusable)
        })
        .unwrap();
        thread.join();
        rx.recv_timeout(HANG).unwrap()
    }

    fn is_spare(name: &str) -> bool {
        spares().waiting.iter().any(|spare| spare.name == name)
    }

    /// The OS name of the thread with Rust name `name`, if it is a spare.
    #[cfg(target_os = "linux")]
    fn os_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    #[test]
    fn the_next_run_with_the_same_name_and_stack_takes_the_spare() {
        let _alone = alone();
        warm("it-same", 1 << 20);
        let first = run_on("it-same", 1 << 20, true);
        assert!(is_spare("it-same"));
        let second = run_on("it-same", 1 << 20, true);
        assert_eq!(first, second);
    }

    #[test]
    fn another_name_or_stack_size_gets_a_thread_of_its_own() {
        let _alone = alone();
        warm("it-key-a", 1 << 20);
        let first = run_on("it-key-a", 1 << 20, true);
        assert_ne!(run_on("it-key-b", 1 << 20, true), first);
        assert_ne!(run_on("it-key-a", 2 << 20, true), first);
        assert_eq!(run_on("it-key-a", 1 << 20, true), first);
    }

    #[test]
    fn a_thread_whose_body_forbids_reuse_ends() {
        let _alone = alone();
        warm("it-unfit", 1 << 20);
        let first = run_on("it-unfit", 1 << 20, false);
        assert!(!is_spare("it-unfit"));
        assert_ne!(run_on("it-unfit", 1 << 20, true), first);
    }

    #[test]
    fn the_thread_keeps_its_rust_name_and_shows_the_os_whether_it_is_a_spare() {
        let _alone = alone();
        warm("it-names", 1 << 20);
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let mut thread = IsleThread::spawn("it-names".to_owned(), 1 << 20, None, move |_| {
            tx.send(thread::current().name().map(str::to_owned))
                .unwrap();
            released.recv().unwrap();
            after(true)
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(HANG).unwrap().as_deref(), Some("it-names"));
        #[cfg(target_os = "linux")]
        assert!(os_names().iter().any(|n| n == "it-names"));
        release.send(()).unwrap();
        thread.join();
        #[cfg(target_os = "linux")]
        assert!(!os_names().iter().any(|n| n == "it-names"));
        // Serving again: the isle's name is back.
        let (tx, rx) = mpsc::channel();
        let mut again = IsleThread::spawn("it-names".to_owned(), 1 << 20, None, move |_| {
            #[cfg(target_os = "linux")]
            tx.send(os_names().iter().any(|n| n == "it-names")).unwrap();
            #[cfg(not(target_os = "linux"))]
            tx.send(true).unwrap();
            after(true)
        })
        .unwrap();
        again.join();
        assert!(rx.recv_timeout(HANG).unwrap());
    }

    #[test]
    fn long_names_are_cut_as_the_os_keeps_them() {
        let _alone = alone();
        let name = "it-a-rather-long-thread-name";
        warm(name, 1 << 20);
        let (tx, rx) = mpsc::channel();
        let mut first = IsleThread::spawn(name.to_owned(), 1 << 20, None, |_| after(true)).unwrap();
        first.join();
        let mut second = IsleThread::spawn(name.to_owned(), 1 << 20, None, move |_| {
            #[cfg(target_os = "linux")]
            tx.send(os_names().iter().any(|n| n == "it-a-rather-lon"))
                .unwrap();
            #[cfg(not(target_os = "linux"))]
            tx.send(true).unwrap();
            after(true)
        })
        .unwrap();
        second.join();
        assert!(rx.recv_timeout(HANG).unwrap());
    }

    #[test]
    fn a_name_with_a_nul_byte_is_refused() {
        let _alone = alone();
        let err =
            IsleThread::spawn("it\0nul".to_owned(), 1 << 20, None, |_| after(true)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_run_still_going_is_not_joined_within_a_timeout_then_is() {
        let _alone = alone();
        let (release, released) = mpsc::channel::<()>();
        let mut thread = IsleThread::spawn("it-busy".to_owned(), 1 << 20, None, move |_| {
            let _ = released.recv();
            after(true)
        })
        .unwrap();
        assert!(!thread.join_within(Duration::from_millis(5)));
        assert!(!thread.join_within(Duration::ZERO));
        release.send(()).unwrap();
        assert!(thread.join_within(HANG));
        assert!(
            thread.join_within(Duration::ZERO),
            "joined once, then at once"
        );
        thread.join();
    }

    #[test]
    fn dropping_the_handle_leaves_the_run_going_to_its_end() {
        let _alone = alone();
        let (release, released) = mpsc::channel::<()>();
        let (ended, ends) = mpsc::channel::<()>();
        let thread = IsleThread::spawn("it-detached".to_owned(), 1 << 20, None, move |_| {
            let _ = released.recv();
            ended.send(()).unwrap();
            after(true)
        })
        .unwrap();
        drop(thread);
        release.send(()).unwrap();
        ends.recv_timeout(HANG).unwrap();
    }

    #[test]
    fn an_unused_spare_ends_after_its_idle_time() {
        let _alone = alone();
        warm("it-idle", 1 << 20);
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn("it-idle".to_owned(), 1 << 20, None, move |_| {
            tell_when_the_thread_ends(tx);
            after(true)
        })
        .unwrap();
        thread.join();
        assert!(is_spare("it-idle"));
        rx.recv_timeout(SPARE_IDLE + HANG).unwrap();
        assert!(!is_spare("it-idle"));
    }

    #[test]
    fn a_spare_taken_as_its_wait_runs_out_serves_the_run() {
        let _alone = alone();
        warm("it-expiring", 1 << 20);
        let first = run_on("it-expiring", 1 << 20, true);
        // The spare stops where its wait has run out, before it withdraws.
        let paused =
            crate::core::pause::arm(crate::core::pause::Window::SpareExpiring, "it-expiring");
        paused.reached();
        // Taken meanwhile: handed the run under the lock the spare is about to take.
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn("it-expiring".to_owned(), 1 << 20, None, move |_| {
            tx.send(thread::current().id()).unwrap();
            after(true)
        })
        .unwrap();
        assert!(!is_spare("it-expiring"));
        paused.release();
        thread.join();
        assert_eq!(rx.recv_timeout(HANG).unwrap(), first);
    }

    #[test]
    fn a_spare_pushed_out_by_newer_ones_ends() {
        let _alone = alone();
        warm("it-pushed", 1 << 20);
        let (tx, rx) = mpsc::channel();
        let mut oldest = IsleThread::spawn("it-pushed".to_owned(), 1 << 20, None, move |_| {
            tell_when_the_thread_ends(tx);
            after(true)
        })
        .unwrap();
        oldest.join();
        // Enough newer spares to push it out (other tests' spares only help).
        warm("it-newer", 1 << 20);
        let newer: Vec<_> = (0..MAX_SPARES)
            .map(|_| {
                let (release, released) = mpsc::channel::<()>();
                let thread = IsleThread::spawn("it-newer".to_owned(), 1 << 20, None, move |_| {
                    let _ = released.recv();
                    after(true)
                })
                .unwrap();
                (release, thread)
            })
            .collect();
        for (release, mut thread) in newer {
            release.send(()).unwrap();
            thread.join();
        }
        rx.recv_timeout(HANG).unwrap();
        assert!(!is_spare("it-pushed"));
    }

    /// A process forked while a thread of its parent held the list of spares (a spare
    /// offering itself, say, which spares do at any time): the child starts threads all the
    /// same, without waiting for a lock whose holder it does not have.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_child_forked_while_the_spares_are_locked_starts_its_threads() {
        let _alone = alone();
        warm("it-fork", 1 << 20);
        let paused = crate::core::pause::arm(crate::core::pause::Window::SparesLocked, "it-fork");
        let mut thread =
            IsleThread::spawn("it-fork".to_owned(), 1 << 20, None, |_| after(true)).unwrap();
        paused.reached();
        // SAFETY: the child only starts a thread, waits for it and leaves with `_exit`; its
        // alarm (default action: terminate) ends it if it hangs.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: arms this (child) process's alarm.
            unsafe { libc::alarm(5) };
            let (tx, rx) = mpsc::channel();
            let started = IsleThread::spawn("it-fork".to_owned(), 1 << 20, None, move |_| {
                tx.send(()).unwrap();
                AfterRun::End
            });
            let code = match started {
                Ok(mut started) => {
                    started.join();
                    if rx.try_recv().is_ok() {
                        0
                    } else {
                        2
                    }
                }
                Err(_) => 3,
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        paused.release();
        thread.join();
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child could not start a thread (status {status:#x}: {})",
            if libc::WIFSIGNALED(status) {
                "killed by its alarm: it hung"
            } else {
                "failed"
            }
        );
    }

    /// A body that leaves a spare preparing `value` under the key `value`.
    fn preparing(value: u32) -> impl FnOnce(Prepared) -> AfterRun + Send + 'static {
        move |_| {
            AfterRun::Wait(Some(Preparation {
                key: value.to_string(),
                make: Box::new(move || Some(Box::new(value) as Box<dyn Any>)),
            }))
        }
    }

    /// Runs a body with `key` on `name`; returns its thread and the number it was handed.
    fn handed(name: &str, key: Option<&str>) -> (ThreadId, Option<u32>) {
        let (tx, rx) = mpsc::channel();
        let mut thread =
            IsleThread::spawn(name.to_owned(), 1 << 20, key.map(str::to_owned), move |p| {
                let value = p.and_then(|p| p.downcast::<u32>().ok()).map(|v| *v);
                tx.send((thread::current().id(), value)).unwrap();
                after(true)
            })
            .unwrap();
        thread.join();
        rx.recv_timeout(HANG).unwrap()
    }

    #[test]
    fn a_thread_waits_as_a_spare_only_for_a_name_that_came_up_before() {
        let _alone = alone();
        // A name never asked for before: the thread ends when done, preparing nothing.
        let mut once =
            IsleThread::spawn("it-once".to_owned(), 1 << 20, None, preparing(7)).unwrap();
        once.join();
        assert!(!is_spare("it-once"));
        // Asked for again: this thread waits, and prepares.
        let (thread, value) = handed("it-once", Some("7"));
        assert_eq!(value, None);
        let mut again =
            IsleThread::spawn("it-once".to_owned(), 1 << 20, None, preparing(7)).unwrap();
        again.join();
        assert_eq!(handed("it-once", Some("7")), (thread, Some(7)));
    }

    #[test]
    fn a_recurring_name_among_many_names_used_once_gets_a_spare() {
        let _alone = alone();
        let mut last = None;
        let mut reused = false;
        for round in 0..4 {
            let id = run_on("it-hot", 1 << 20, true);
            reused |= last == Some(id);
            last = Some(id);
            // More names used once in between than there are spares.
            for i in 0..64 {
                run_on(&format!("it-session-{round}-{i}"), 1 << 20, true);
            }
        }
        assert!(reused, "`it-hot` came up 4 times and never found a spare");
    }

    #[test]
    fn a_spare_hands_what_it_prepared_to_the_next_run() {
        let _alone = alone();
        warm("it-prepared", 1 << 20);
        let mut first = IsleThread::spawn("it-prepared".to_owned(), 1 << 20, None, |_| {
            AfterRun::Wait(Some(Preparation {
                key: "42".to_owned(),
                make: Box::new(|| Some(Box::new(42_u32) as Box<dyn Any>)),
            }))
        })
        .unwrap();
        first.join();
        let (tx, rx) = mpsc::channel();
        let mut second = IsleThread::spawn(
            "it-prepared".to_owned(),
            1 << 20,
            Some("42".to_owned()),
            move |prepared| {
                let value = prepared.and_then(|p| p.downcast::<u32>().ok()).map(|v| *v);
                tx.send(value).unwrap();
                after(true)
            },
        )
        .unwrap();
        second.join();
        assert_eq!(rx.recv_timeout(HANG).unwrap(), Some(42));
        // Taken once: the run after gets nothing.
        let (tx, rx) = mpsc::channel();
        let mut third =
            IsleThread::spawn("it-prepared".to_owned(), 1 << 20, None, move |prepared| {
                tx.send(prepared.is_none()).unwrap();
                after(true)
            })
            .unwrap();
        third.join();
        assert!(rx.recv_timeout(HANG).unwrap());
    }

    /// A run that cannot use what a spare prepares (another key, or none) does not wait for
    /// it: it gets another thread. A run takes the spare that prepared for its key before one
    /// that prepares nothing, and that one before a new thread.
    #[test]
    fn a_run_takes_a_spare_whose_preparation_it_can_use() {
        let _alone = alone();
        warm("it-prep-key", 1 << 20);
        // Runs a body with `key` on `it-prep-key`; it leaves a spare preparing for `then`.
        let run = |key: Option<&str>, then: Option<&str>| {
            let (tx, rx) = mpsc::channel();
            let then = then.map(str::to_owned);
            let mut thread =
                IsleThread::spawn("it-prep-key".to_owned(), 1 << 20, key.map(str::to_owned), {
                    move |prepared| {
                        tx.send((thread::current().id(), prepared.is_some()))
                            .unwrap();
                        AfterRun::Wait(then.map(|key| Preparation {
                            key,
                            make: Box::new(|| Some(Box::new(1_u8) as Box<dyn Any>)),
                        }))
                    }
                })
                .unwrap();
            thread.join();
            rx.recv_timeout(HANG).unwrap()
        };
        let (a, _) = run(None, Some("a"));
        // Neither another key nor none takes the spare preparing for `a`.
        let (b, _) = run(Some("b"), Some("b"));
        assert_ne!(b, a);
        let (none, _) = run(None, None);
        assert!(none != a && none != b);
        // The spare that prepared for `a`, though `none`'s waited less.
        assert_eq!(run(Some("a"), Some("a")), (a, true));
        // No spare prepared for `c`: the one that prepares nothing.
        assert_eq!(run(Some("c"), None), (none, false));
    }

    #[test]
    fn a_preparation_that_panics_leaves_nothing_and_the_spare_serves_on() {
        let _alone = alone();
        warm("it-prep-panic", 1 << 20);
        let first = run_on("it-prep-panic", 1 << 20, true);
        let mut panicking = IsleThread::spawn("it-prep-panic".to_owned(), 1 << 20, None, |_| {
            AfterRun::Wait(Some(Preparation {
                key: "panics".to_owned(),
                make: Box::new(|| panic!("preparation failed")),
            }))
        })
        .unwrap();
        panicking.join();
        let (tx, rx) = mpsc::channel();
        let mut next = IsleThread::spawn(
            "it-prep-panic".to_owned(),
            1 << 20,
            Some("panics".to_owned()),
            move |prepared| {
                tx.send((thread::current().id(), prepared.is_none()))
                    .unwrap();
                after(true)
            },
        )
        .unwrap();
        next.join();
        assert_eq!(rx.recv_timeout(HANG).unwrap(), (first, true));
    }

    #[test]
    fn what_an_unused_spare_prepared_is_dropped_when_it_ends() {
        let _alone = alone();
        struct Dropped(mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        warm("it-prep-drop", 1 << 20);
        let (tx, rx) = mpsc::channel();
        let mut thread = IsleThread::spawn("it-prep-drop".to_owned(), 1 << 20, None, move |_| {
            AfterRun::Wait(Some(Preparation {
                key: "dropped".to_owned(),
                make: Box::new(move || Some(Box::new(Dropped(tx)) as Box<dyn Any>)),
            }))
        })
        .unwrap();
        thread.join();
        rx.recv_timeout(SPARE_IDLE + HANG).unwrap();
        assert!(!is_spare("it-prep-drop"));
    }
}
