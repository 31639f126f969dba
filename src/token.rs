//! [`CancelToken`]: a shareable, hierarchical cancellation flag.

use std::fmt;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::wait;

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
    node: Arc<Node>,
}

/// Told once when the token it is attached to is cancelled.
pub(crate) trait CancelHook: Send + Sync {
    /// Called on the cancelling thread, after the token is marked cancelled.
    fn cancelled(&self);
}

struct Node {
    cancelled: AtomicBool,
    /// Fixed at construction: the request this token belongs to, if any.
    hook: Option<Arc<dyn CancelHook>>,
    /// The parent and our key in its listener table.
    parent: Option<(Arc<Node>, usize)>,
    /// Taken (left empty) when the node is cancelled; nothing is added afterwards.
    listeners: Mutex<Slab<Listener>>,
}

enum Listener {
    Child(Weak<Node>),
    Waker(Waker),
}

impl Node {
    fn new(hook: Option<Arc<dyn CancelHook>>) -> Self {
        Node {
            cancelled: AtomicBool::new(false),
            hook,
            parent: None,
            listeners: Mutex::new(Slab::new()),
        }
    }

    /// Locks the listener table. A panic cannot leave the table inconsistent (every update is
    /// a single slab operation), so a poisoned lock is simply taken over.
    fn listeners(&self) -> MutexGuard<'_, Slab<Listener>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn cancel(&self) {
        let listeners = {
            let mut listeners = self.listeners();
            if self.cancelled.swap(true, Ordering::AcqRel) {
                return;
            }
            mem::take(&mut *listeners)
        };
        if let Some(hook) = &self.hook {
            hook.cancelled();
        }
        for (_, listener) in listeners {
            match listener {
                Listener::Child(child) => {
                    if let Some(child) = child.upgrade() {
                        child.cancel();
                    }
                }
                Listener::Waker(waker) => waker.wake(),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some((parent, key)) = &self.parent {
            // After a cancel the parent's table is empty and stays so: removal is a no-op then.
            let removed = parent.listeners().try_remove(*key);
            drop(removed);
        }
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
            node: Arc::new(Node::new(None)),
        }
    }

    /// A token attached to a request: `hook` is told when it is cancelled, also when `parent`
    /// is already cancelled at creation.
    pub(crate) fn for_request(parent: Option<&CancelToken>, hook: Arc<dyn CancelHook>) -> Self {
        let token = match parent {
            Some(parent) => parent.child_with(Some(hook)),
            None => CancelToken {
                node: Arc::new(Node::new(Some(hook))),
            },
        };
        if token.is_cancelled() {
            if let Some(hook) = &token.node.hook {
                hook.cancelled();
            }
        }
        token
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
        self.node.cancel();
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
        self.node.cancelled.load(Ordering::Acquire)
    }

    /// Creates a token that is cancelled when this one is, and that can also be cancelled on
    /// its own without affecting this one.
    ///
    /// A child of an already cancelled token starts cancelled. Dropping a child unregisters it
    /// from its parent, so a long-lived parent does not accumulate dead children.
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
        self.child_with(None)
    }

    fn child_with(&self, hook: Option<Arc<dyn CancelHook>>) -> CancelToken {
        let parent = &self.node;
        let node = Arc::new_cyclic(|weak| {
            let mut node = Node::new(hook);
            let mut listeners = parent.listeners();
            if parent.cancelled.load(Ordering::Acquire) {
                node.cancelled = AtomicBool::new(true);
            } else {
                let key = listeners.insert(Listener::Child(weak.clone()));
                node.parent = Some((parent.clone(), key));
            }
            node
        });
        CancelToken { node }
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
        let mut listeners = self.node.listeners();
        if self.is_cancelled() {
            return None;
        }
        Some(listeners.insert(Listener::Waker(waker)))
    }

    /// Removes a waker stored by [`register_waker`](Self::register_waker).
    pub(crate) fn unregister_waker(&self, key: usize) {
        let removed = self.node.listeners().try_remove(key);
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

    struct Count(AtomicUsize);
    impl CancelHook for Count {
        fn cancelled(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
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
        assert_eq!(root.node.listeners().len(), 0);
    }

    #[test]
    fn hook_fires_once_even_if_cancelled_twice() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let token = CancelToken::for_request(None, count.clone());
        token.cancel();
        token.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn hook_fires_when_parent_is_already_cancelled() {
        let parent = CancelToken::new();
        parent.cancel();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let token = CancelToken::for_request(Some(&parent), count.clone());
        assert!(token.is_cancelled());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn hook_fires_through_parent() {
        let parent = CancelToken::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let _token = CancelToken::for_request(Some(&parent), count.clone());
        parent.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_child_creation_and_cancel_never_misses_a_child() {
        for _ in 0..200 {
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
        assert_eq!(token.node.listeners().len(), 0);
    }

    #[test]
    fn debug_shows_state() {
        let token = CancelToken::new();
        assert_eq!(format!("{token:?}"), "CancelToken { is_cancelled: false }");
        token.cancel();
        assert_eq!(format!("{token:?}"), "CancelToken { is_cancelled: true }");
    }
}
