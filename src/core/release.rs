//! [`Releases`]: keys of values a Lua thread holds for handles on other threads, given back by
//! whichever thread drops the last handle, without blocking it.
//!
//! A dropping thread records the key in a lock-free list, then nudges the Lua thread (with a
//! message through the isle's queue) unless a nudge is already on its way. The Lua thread takes
//! the whole list when the nudge arrives and after each request, so a key whose nudge could not
//! be queued (a full queue) is taken after the next request at the latest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// The keys given back to one VM, and whether a nudge to take them is on its way.
#[derive(Debug)]
pub(crate) struct Releases {
    tx: Sender<usize>,
    rx: Receiver<usize>,
    /// Set by the release that sends a nudge, cleared by the Lua thread before it takes keys.
    nudged: AtomicBool,
}

impl Releases {
    pub(crate) fn new() -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Arc::new(Releases {
            tx,
            rx,
            nudged: AtomicBool::new(false),
        })
    }

    /// Records `key` as given back. Returns whether the caller should nudge the Lua thread:
    /// `false` when a nudge sent earlier has not been taken yet (it will take `key` too).
    pub(crate) fn push(&self, key: usize) -> bool {
        // Never fails: `self` holds the receiver.
        let _ = self.tx.send(key);
        // Pairs with the swap in `take`: either that swap sees this one (and the key is in the
        // list before it drains), or this one sees it cleared and nudges again.
        // (Sequentially consistent with the queue's own send fence: a key is never missed.)
        !self.nudged.swap(true, Ordering::SeqCst)
    }

    /// Forgets an earlier nudge: nothing can be given back any more (no function is kept), so
    /// the next release must nudge again. On the Lua thread.
    pub(crate) fn reset_nudge(&self) {
        self.nudged.store(false, Ordering::SeqCst);
    }

    /// Takes every key given back so far (on the Lua thread).
    pub(crate) fn take(&self, mut release: impl FnMut(usize)) {
        self.nudged.swap(false, Ordering::SeqCst);
        while let Ok(key) = self.rx.try_recv() {
            release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(releases: &Releases) -> Vec<usize> {
        let mut keys = Vec::new();
        releases.take(|key| keys.push(key));
        keys.sort_unstable();
        keys
    }

    #[test]
    fn one_nudge_until_the_keys_are_taken() {
        let releases = Releases::new();
        assert!(releases.push(1));
        assert!(!releases.push(2));
        assert_eq!(taken(&releases), [1, 2]);
        assert!(releases.push(3));
        assert_eq!(taken(&releases), [3]);
        assert_eq!(taken(&releases), [] as [usize; 0]);
    }

    #[test]
    fn a_failed_nudge_lets_the_next_release_nudge() {
        let releases = Releases::new();
        assert!(releases.push(1));
        releases.reset_nudge();
        assert!(releases.push(2));
        assert_eq!(taken(&releases), [1, 2]);
    }

    #[test]
    fn every_key_pushed_concurrently_is_taken_and_a_nudge_covers_it() {
        let releases = Releases::new();
        let mut seen = Vec::new();
        std::thread::scope(|s| {
            for t in 0..4 {
                let releases = &releases;
                s.spawn(move || {
                    for i in 0..1000 {
                        releases.push(t * 1000 + i);
                    }
                });
            }
            // Taking races with the pushes: whatever is not taken now is taken below.
            for _ in 0..100 {
                releases.take(|key| seen.push(key));
            }
        });
        // Every push made after the last take saw `nudged` cleared or set by a push whose
        // nudge (here: the final take) covers it.
        releases.take(|key| seen.push(key));
        seen.sort_unstable();
        assert_eq!(seen, (0..4000).collect::<Vec<_>>());
    }
}
