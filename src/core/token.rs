//! [`CancelToken`]: a shareable, hierarchical cancellation flag.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::core::wait;

/// A cancellation signal that can be shared between threads and tasks.
///
/// Give a token to any number of requests (see [`Request::token`](crate::Request::token)):
/// cancelling it cancels all of them — queued ones never start, running ones are interrupted.
/// Clones share one state. [`child_token`](CancelToken::child_token) makes a token that is
/// cancelled together with its parent but can also be cancelled on its own. Cancellation is
/// permanent.
///
/// Every request also has a token of its own, a child of the one it was given; see
/// [`Task::cancel_token`](crate::Task::cancel_token).
///
/// # Examples
///
/// ```
/// use mlua_isle::{CancelToken, Isle};
///
/// let isle = Isle::spawn(|_| Ok(()))?;
/// let token = CancelToken::new();
/// let task = isle.request().token(&token).spawn_eval::<()>("while true do end")?;
/// token.cancel();
/// assert!(task.wait().unwrap_err().is_cancelled());
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Clone)]
pub struct CancelToken {
    owner: Arc<dyn TokenOwner>,
}

/// Whatever holds a token's [`Node`]: a plain token, or a request (whose slot embeds the node,
/// saving an allocation per request and learning of its cancellation directly).
pub(crate) trait TokenOwner: Send + Sync + 'static {
    fn node(&self) -> &Node;
    /// Called once, on the cancelling thread, after the node is marked cancelled.
    fn on_cancel(&self) {}
}

/// The state of one token in the tree.
pub(crate) struct Node {
    cancelled: AtomicBool,
    /// The parent and our key in its listener table.
    parent: Option<(CancelToken, usize)>,
    /// Taken (left empty) when the node is cancelled; nothing is added afterwards.
    listeners: Mutex<Slab<Listener>>,
}

enum Listener {
    Child(Weak<dyn TokenOwner>),
    Waker(Waker),
}

/// A token that belongs to nothing else.
struct Plain(Node);

impl TokenOwner for Plain {
    fn node(&self) -> &Node {
        &self.0
    }
}

impl Node {
    /// A node that is a child of `parent` (or a root): registered with the parent as `me`, or
    /// born cancelled if the parent already is. Call it from `Arc::new_cyclic`.
    pub(crate) fn new(parent: Option<&CancelToken>, me: Weak<dyn TokenOwner>) -> Node {
        let mut node = Node {
            cancelled: AtomicBool::new(false),
            parent: None,
            listeners: Mutex::new(Slab::new()),
        };
        if let Some(parent) = parent {
            let mut listeners = parent.node().listeners();
            if parent.is_cancelled() {
                node.cancelled = AtomicBool::new(true);
            } else {
                let key = listeners.insert(Listener::Child(me));
                drop(listeners);
                node.parent = Some((parent.clone(), key));
            }
        }
        node
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Locks the listener table. A panic cannot leave the table inconsistent (every update is
    /// a single slab operation), so a poisoned lock is simply taken over.
    fn listeners(&self) -> MutexGuard<'_, Slab<Listener>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Cancels `owner`'s node and, after it, every descendant (for whoever holds the owner rather
/// than a token).
pub(crate) fn cancel_owner(owner: &dyn TokenOwner) {
    cancel(owner);
}

/// Cancels `owner`'s node and, after it, every descendant. A work list rather than recursion,
/// so that a deep chain of child tokens cannot overflow the stack.
fn cancel(owner: &dyn TokenOwner) {
    let mut children = Vec::new();
    cancel_one(owner, &mut children);
    while let Some(child) = children.pop() {
        cancel_one(&*child, &mut children);
    }
}

/// Cancels `owner`'s node alone, unless it already is: marks it, tells the owner, wakes its
/// waiters and adds its live children to `children`.
///
/// A child registered while its `Arc` is still being built cannot be reached from here (its
/// `Weak` does not upgrade yet): the child looks at its parent once built ([`adopted`]). The
/// fences make sure one of the two sides sees the other.
fn cancel_one(owner: &dyn TokenOwner, children: &mut Vec<Arc<dyn TokenOwner>>) {
    let listeners = {
        let node = owner.node();
        let mut listeners = node.listeners();
        if node.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        mem::take(&mut *listeners)
    };
    fence(Ordering::SeqCst);
    owner.on_cancel();
    for (_, listener) in listeners {
        match listener {
            Listener::Child(child) => children.extend(child.upgrade()),
            Listener::Waker(waker) => waker.wake(),
        }
    }
}

/// Called once a child's `Arc` is built: cancels it if its parent was cancelled meanwhile (the
/// parent's cancel could not reach it; see [`cancel_one`]).
fn adopted(owner: &dyn TokenOwner) {
    fence(Ordering::SeqCst);
    let parent_cancelled = owner
        .node()
        .parent
        .as_ref()
        .is_some_and(|(parent, _)| parent.is_cancelled());
    if parent_cancelled {
        cancel(owner);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some((parent, key)) = self.parent.take() {
            // After a cancel the parent's table is empty and stays so: removal is a no-op then.
            let removed = parent.node().listeners().try_remove(key);
            drop(removed);
            release(parent);
        }
    }
}

thread_local! {
    /// Parent links waiting to be dropped by the outermost [`release`] running on this thread;
    /// `None` when none is running.
    static RELEASING: RefCell<Option<Vec<CancelToken>>> = const { RefCell::new(None) };
}

/// Drops a node's link to its parent without recursing.
///
/// A parent is kept alive by its children's links (and its own handles). Dropping the last
/// link drops the parent's node, which drops the parent's own link, and so on up a chain of
/// child tokens: as plain recursion, a long chain would overflow the stack. So the outermost
/// release on a thread drops links one at a time, and a release nested in one of those drops
/// only queues its link for it.
fn release(parent: CancelToken) {
    let mut parent = Some(parent);
    let outermost = RELEASING
        .try_with(|releasing| {
            let mut releasing = releasing.borrow_mut();
            match &mut *releasing {
                Some(queue) => {
                    queue.extend(parent.take());
                    false
                }
                None => {
                    *releasing = Some(Vec::new());
                    true
                }
            }
        })
        // This thread's locals are being destroyed: drop the link the plain way.
        .unwrap_or(false);
    if !outermost {
        drop(parent);
        return;
    }
    let _done = Released;
    drop(parent);
    while let Some(next) = RELEASING
        .try_with(|releasing| releasing.borrow_mut().as_mut().and_then(Vec::pop))
        .ok()
        .flatten()
    {
        drop(next);
    }
}

/// Ends the outermost [`release`], even if a destructor panicked: what is left of its queue
/// (nothing, unless it panicked) is dropped the plain way.
struct Released;

impl Drop for Released {
    fn drop(&mut self) {
        let left = RELEASING
            .try_with(|releasing| releasing.borrow_mut().take())
            .ok()
            .flatten();
        drop(left);
    }
}

impl CancelToken {
    /// Creates a token that is not cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// let token = mlua_isle::CancelToken::new();
    /// assert!(!token.is_cancelled());
    /// ```
    pub fn new() -> Self {
        CancelToken {
            owner: Arc::new(Plain(Node::new(None, Weak::<Plain>::new()))),
        }
    }

    /// The token of `owner`. If its node was born cancelled (its parent already was), the
    /// owner is told now.
    pub(crate) fn of(owner: Arc<dyn TokenOwner>) -> Self {
        if owner.node().is_cancelled() {
            owner.on_cancel();
        } else {
            adopted(&*owner);
        }
        CancelToken { owner }
    }

    fn node(&self) -> &Node {
        self.owner.node()
    }

    /// Cancels this token and every child token made from it, waking everything that waits
    /// for it. Calling it again does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// let token = mlua_isle::CancelToken::new();
    /// let clone = token.clone();
    /// clone.cancel();
    /// assert!(token.is_cancelled());
    /// ```
    pub fn cancel(&self) {
        cancel(&*self.owner);
    }

    /// Whether this token (or one of its ancestors) has been cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// let token = mlua_isle::CancelToken::new();
    /// assert!(!token.is_cancelled());
    /// token.cancel();
    /// assert!(token.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.node().is_cancelled()
    }

    /// Creates a token that is cancelled when this one is, and that can also be cancelled on
    /// its own without affecting this one.
    ///
    /// A child of an already cancelled token starts cancelled. Dropping a child unregisters it
    /// from its parent, so a long-lived parent does not accumulate dead children. Chains of
    /// children may be arbitrarily deep: neither cancelling nor dropping them recurses.
    ///
    /// # Examples
    ///
    /// ```
    /// let parent = mlua_isle::CancelToken::new();
    /// let child = parent.child_token();
    /// child.cancel();
    /// assert!(!parent.is_cancelled());
    ///
    /// let child = parent.child_token();
    /// parent.cancel();
    /// assert!(child.is_cancelled());
    /// ```
    pub fn child_token(&self) -> CancelToken {
        let owner: Arc<dyn TokenOwner> = Arc::new_cyclic(|me: &Weak<Plain>| {
            let node = Node::new(Some(self), me.clone());
            #[cfg(test)]
            crate::core::pause::at(crate::core::pause::Window::ChildUnbuilt);
            Plain(node)
        });
        adopted(&*owner);
        CancelToken { owner }
    }

    /// Blocks the calling thread until the token is cancelled.
    ///
    /// # Blocking
    ///
    /// Blocks the thread; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let token = mlua_isle::CancelToken::new();
    /// let waiter = {
    ///     let token = token.clone();
    ///     std::thread::spawn(move || token.wait())
    /// };
    /// token.cancel();
    /// waiter.join().unwrap();
    /// ```
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Blocks the calling thread until the token is cancelled or `timeout` has passed; returns
    /// whether it was cancelled.
    ///
    /// Useful in a host function that sleeps or polls: pass it
    /// [`current_token`](crate::current_token) so the sleep ends when the request is cancelled.
    ///
    /// # Blocking
    ///
    /// Blocks the thread; do not call it on an async runtime's worker thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let token = mlua_isle::CancelToken::new();
    /// assert!(!token.wait_timeout(Duration::from_millis(1)));
    /// token.cancel();
    /// assert!(token.wait_timeout(Duration::from_secs(5)));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(wait::deadline_after(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let Some(key) = self.register_waker(wait::thread_waker()) else {
            return true;
        };
        loop {
            if self.is_cancelled() {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.unregister_waker(key);
                return self.is_cancelled();
            }
            wait::park_until(deadline);
        }
    }

    /// Registers `waker` to be woken on cancellation. Returns `None` when the token is already
    /// cancelled (the waker is then not stored).
    pub(crate) fn register_waker(&self, waker: Waker) -> Option<usize> {
        let mut listeners = self.node().listeners();
        if self.is_cancelled() {
            return None;
        }
        Some(listeners.insert(Listener::Waker(waker)))
    }

    /// Replaces the waker stored under `key`; returns `false` when the token is cancelled.
    fn update_waker(&self, key: usize, waker: &Waker) -> bool {
        let mut listeners = self.node().listeners();
        if self.is_cancelled() {
            return false;
        }
        let replaced = match listeners.get_mut(key) {
            Some(Listener::Waker(stored)) if !stored.will_wake(waker) => {
                Some(mem::replace(stored, waker.clone()))
            }
            _ => None,
        };
        // The old waker may be the last reference to something that uses this token in its
        // `Drop`: drop it after the lock.
        drop(listeners);
        drop(replaced);
        true
    }

    /// Returns a future that completes when the token is cancelled (at once if it already is).
    ///
    /// The future owns a clone of the token, so it is `'static` and `Send`. No wake-up is lost:
    /// it checks the token, registers its waker, and checks again.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only unregisters its waker.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let token = mlua_isle::CancelToken::new();
    /// let waiting = token.cancelled();
    /// token.cancel();
    /// waiting.await; // completes
    /// # }
    /// ```
    pub fn cancelled(&self) -> Cancellation {
        Cancellation {
            token: self.clone(),
            key: None,
        }
    }

    /// Removes a waker stored by [`register_waker`](Self::register_waker).
    pub(crate) fn unregister_waker(&self, key: usize) {
        let removed = self.node().listeners().try_remove(key);
        drop(removed);
    }

    /// Returns a guard that cancels this token when dropped, unless disarmed.
    ///
    /// # Examples
    ///
    /// ```
    /// let token = mlua_isle::CancelToken::new();
    /// {
    ///     let _guard = token.clone().drop_guard();
    /// }
    /// assert!(token.is_cancelled());
    /// ```
    pub fn drop_guard(self) -> DropGuard {
        DropGuard { token: Some(self) }
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken::new()
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("is_cancelled", &self.is_cancelled())
            .finish()
    }
}

/// The future returned by [`CancelToken::cancelled`]: completes when the token is cancelled.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let token = mlua_isle::CancelToken::new();
/// let canceller = token.clone();
/// tokio::spawn(async move { canceller.cancel() });
/// token.cancelled().await;
/// assert!(token.is_cancelled());
/// # }
/// ```
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Cancellation {
    token: CancelToken,
    /// Where our waker is stored in the token's listener table, once registered.
    key: Option<usize>,
}

impl Future for Cancellation {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        let registered = match self.key {
            Some(key) => self.token.update_waker(key, cx.waker()),
            None => match self.token.register_waker(cx.waker().clone()) {
                Some(key) => {
                    self.key = Some(key);
                    true
                }
                None => false,
            },
        };
        // Registration happens under the lock that `cancel` takes: if it succeeded, a later
        // cancel wakes us; if it failed, the token is already cancelled.
        if registered && !self.token.is_cancelled() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl Drop for Cancellation {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.token.unregister_waker(key);
        }
    }
}

/// Cancels its token when dropped; see [`CancelToken::drop_guard`].
///
/// # Examples
///
/// ```
/// let token = mlua_isle::CancelToken::new();
/// let guard = token.clone().drop_guard();
/// let token_again = guard.disarm();
/// assert!(!token_again.is_cancelled());
/// ```
#[derive(Debug)]
#[must_use = "a drop guard cancels its token as soon as it is dropped"]
pub struct DropGuard {
    token: Option<CancelToken>,
}

impl DropGuard {
    /// Gives the token back without cancelling it.
    ///
    /// # Examples
    ///
    /// ```
    /// let guard = mlua_isle::CancelToken::new().drop_guard();
    /// assert!(!guard.disarm().is_cancelled());
    /// ```
    pub fn disarm(mut self) -> CancelToken {
        self.token
            .take()
            .expect("token is present until disarm or drop")
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    /// An owner that counts how often it is told of a cancel.
    struct Count {
        node: Node,
        told: AtomicUsize,
    }

    impl TokenOwner for Count {
        fn node(&self) -> &Node {
            &self.node
        }
        fn on_cancel(&self) {
            self.told.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted(parent: Option<&CancelToken>) -> (CancelToken, Arc<Count>) {
        let count = Arc::new_cyclic(|me: &Weak<Count>| Count {
            node: Node::new(parent, me.clone()),
            told: AtomicUsize::new(0),
        });
        (CancelToken::of(count.clone()), count)
    }

    #[test]
    fn cancelling_a_parent_cancels_grandchildren() {
        let root = CancelToken::new();
        let child = root.child_token();
        let grandchild = child.child_token();
        root.cancel();
        assert!(child.is_cancelled());
        assert!(grandchild.is_cancelled());
    }

    #[test]
    fn cancelling_a_child_leaves_parent_and_siblings() {
        let root = CancelToken::new();
        let a = root.child_token();
        let b = root.child_token();
        a.cancel();
        assert!(!root.is_cancelled());
        assert!(!b.is_cancelled());
    }

    #[test]
    fn dropped_children_unregister() {
        let root = CancelToken::new();
        for _ in 0..1000 {
            drop(root.child_token());
        }
        assert_eq!(root.node().listeners().len(), 0);
    }

    #[test]
    fn owner_is_told_once_even_if_cancelled_twice() {
        let (token, count) = counted(None);
        token.cancel();
        token.cancel();
        assert_eq!(count.told.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn owner_is_told_when_parent_is_already_cancelled() {
        let parent = CancelToken::new();
        parent.cancel();
        let (token, count) = counted(Some(&parent));
        assert!(token.is_cancelled());
        assert_eq!(count.told.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn owner_is_told_through_parent() {
        let parent = CancelToken::new();
        let (_token, count) = counted(Some(&parent));
        parent.cancel();
        assert_eq!(count.told.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_cancel_while_a_child_is_being_built_reaches_it() {
        let name = "token-child-unbuilt";
        let root = CancelToken::new();
        let paused = crate::core::pause::arm(crate::core::pause::Window::ChildUnbuilt, name);
        let maker = {
            let root = root.clone();
            thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || root.child_token())
                .unwrap()
        };
        paused.reached();
        root.cancel();
        paused.release();
        assert!(maker.join().unwrap().is_cancelled());
    }

    #[test]
    fn concurrent_child_creation_and_cancel_never_misses_a_child() {
        for _ in 0..2000 {
            let root = CancelToken::new();
            let maker = {
                let root = root.clone();
                thread::spawn(move || (0..50).map(|_| root.child_token()).collect::<Vec<_>>())
            };
            root.cancel();
            for child in maker.join().unwrap() {
                assert!(child.is_cancelled());
            }
        }
    }

    #[test]
    fn blocking_wait_wakes_on_cancel_from_another_thread() {
        let token = CancelToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let token = token.clone();
            thread::spawn(move || {
                tx.send(()).unwrap();
                token.wait_timeout(Duration::from_secs(30))
            })
        };
        rx.recv().unwrap();
        token.cancel();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn timed_out_wait_unregisters_its_waker() {
        let token = CancelToken::new();
        assert!(!token.wait_timeout(Duration::from_millis(1)));
        assert_eq!(token.node().listeners().len(), 0);
    }

    #[test]
    fn cancelled_future_wakes_on_cancel_and_unregisters_on_drop() {
        use std::sync::atomic::AtomicBool;
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let token = CancelToken::new();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Box::pin(token.cancelled());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.as_mut().poll(&mut cx).is_pending()); // re-poll keeps one registration
        assert_eq!(token.node().listeners().len(), 1);
        token.clone().cancel();
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        let other = CancelToken::new();
        let mut dropped = Box::pin(other.cancelled());
        assert!(dropped.as_mut().poll(&mut cx).is_pending());
        drop(dropped);
        assert_eq!(other.node().listeners().len(), 0);
    }

    /// Deep enough to overflow a 2 MiB stack, in debug and release builds, if cancelling or
    /// dropping recursed once per level.
    const DEEP: usize = 200_000;

    /// Runs `f` on a thread with a 2 MiB stack (the default for spawned threads), whatever
    /// `RUST_MIN_STACK` says.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    /// A chain of `DEEP` child tokens under `root`; returns the deepest. Only the next level
    /// keeps each one alive.
    fn deep_chain(root: &CancelToken) -> CancelToken {
        let mut leaf = root.clone();
        for _ in 0..DEEP {
            leaf = leaf.child_token();
        }
        leaf
    }

    #[test]
    fn cancelling_a_deep_chain_of_children_does_not_overflow_the_stack() {
        on_small_stack(|| {
            let root = CancelToken::new();
            let leaf = deep_chain(&root);
            root.cancel();
            assert!(leaf.is_cancelled());
            drop(root);
            drop(leaf);
        });
    }

    #[test]
    fn dropping_a_deep_chain_of_children_does_not_overflow_the_stack() {
        on_small_stack(|| {
            let root = CancelToken::new();
            let leaf = deep_chain(&root);
            // At the bottom, an owner of another kind (as a request's slot would be).
            let (bottom, owner) = counted(Some(&leaf));
            drop(leaf);
            drop(bottom);
            assert_eq!(root.node().listeners().len(), 1);
            drop(owner); // the last link: the whole chain goes
            assert_eq!(root.node().listeners().len(), 0);
        });
    }

    #[test]
    fn debug_shows_state() {
        let token = CancelToken::new();
        assert_eq!(format!("{token:?}"), "CancelToken { is_cancelled: false }");
        token.cancel();
        assert_eq!(format!("{token:?}"), "CancelToken { is_cancelled: true }");
    }
}
