//! The backlog: pages whose vision tokens are still to be encoded from their rasters (written write-behind, or made by
//! another model), in the order the background encoder takes them, and how many there are (Remember's back-pressure).
//!
//! The store is the truth; the backlog is what this process knows of it. It is seeded by a scan when the memory opens
//! (so a restart resumes), fed by Remember, and settled by whoever stores a page's tokens (the background encoder, or
//! a recall encoding on demand) or removes the page (forget). Each entry remembers the newest generation known to be
//! pending, so tokens stored for an older generation (the page was refilled or aged meanwhile) do not settle it.
//!
//! It also knows which pages are being encoded right now ([`Backlog::claim`]): the encoder and a recall that both want a
//! page's tokens take turns, so the second finds the tokens stored by the first instead of encoding the page again.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use optimem_store::{PageId, Scope};

/// Pages waiting for tokens, and the condition variable the encoder sleeps on.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    state: Mutex<State>,
    wake: Condvar,
    /// Signalled when a claim ends; separate from `wake` so that a recall waiting for a page never takes the encoder's
    /// wake-up.
    released: Condvar,
}

/// How often a wait for a claimed page looks at its cancel flag.
const CLAIM_POLL: Duration = Duration::from_millis(50);

/// A page being encoded by its holder; released on drop.
#[derive(Debug)]
pub(crate) struct Claim<'a> {
    backlog: &'a Backlog,
    id: PageId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.backlog.lock().claimed.remove(&self.id);
        self.backlog.released.notify_all();
    }
}

#[derive(Debug, Default)]
struct State {
    /// Pages to look at, oldest first; an id no longer in `pending` is skipped when it comes up.
    queue: VecDeque<(Scope, PageId)>,
    /// Every page known to need tokens, with the newest generation known to need them.
    pending: HashMap<PageId, u64>,
    /// Pages someone is encoding now (see [`Backlog::claim`]).
    claimed: HashSet<PageId>,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters: at worst a page is
        // looked at twice or left for the next start's scan.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pages known to need tokens.
    pub(crate) fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Page `id` of `scope` needs tokens at `generation`; wakes the encoder.
    pub(crate) fn push(&self, scope: &Scope, id: PageId, generation: u64) {
        let mut s = self.lock();
        match s.pending.entry(id) {
            // Already queued or being encoded: whoever settles it at an older generation queues it again.
            Entry::Occupied(mut e) => {
                if *e.get() < generation {
                    e.insert(generation);
                }
            }
            Entry::Vacant(e) => {
                e.insert(generation);
                s.queue.push_back((scope.clone(), id));
            }
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Page `id` holds usable tokens at `generation`, or is gone (`None`). An entry newer than `generation` stays
    /// (the page was refilled or aged after the tokens were encoded) and is queued again.
    pub(crate) fn settle(&self, scope: &Scope, id: PageId, generation: Option<u64>) {
        let mut s = self.lock();
        match (s.pending.get(&id), generation) {
            (None, _) => {}
            (Some(_), None) => {
                s.pending.remove(&id);
            }
            (Some(&known), Some(g)) if known <= g => {
                s.pending.remove(&id);
            }
            (Some(_), Some(_)) => {
                s.queue.push_back((scope.clone(), id));
                drop(s);
                self.wake.notify_one();
            }
        }
    }

    /// Looks at page `id` again later (its tokens could not be stored this time).
    pub(crate) fn requeue(&self, scope: &Scope, id: PageId) {
        let mut s = self.lock();
        if s.pending.contains_key(&id) {
            s.queue.push_back((scope.clone(), id));
        }
    }

    /// Gives up on page `id` until the next start (its raster cannot be encoded); it stays pending in the store.
    pub(crate) fn drop_page(&self, id: PageId) {
        self.lock().pending.remove(&id);
    }

    /// The next page to encode, waiting until there is one; `None` once `stop` is set (see [`Backlog::wake_all`]).
    pub(crate) fn next(&self, stop: &AtomicBool) -> Option<(Scope, PageId)> {
        let mut s = self.lock();
        loop {
            if stop.load(Ordering::Acquire) {
                return None;
            }
            while let Some((scope, id)) = s.queue.pop_front() {
                if s.pending.contains_key(&id) {
                    return Some((scope, id));
                }
            }
            s = self
                .wake
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Claims page `id` for encoding, first waiting while someone else holds it (their encode then usually leaves
    /// nothing to do: the caller re-reads the page). `None` when `cancel` was set while waiting.
    pub(crate) fn claim(&self, id: PageId, cancel: &AtomicBool) -> Option<Claim<'_>> {
        let mut s = self.lock();
        while s.claimed.contains(&id) {
            if cancel.load(Ordering::Acquire) {
                return None;
            }
            s = self
                .released
                .wait_timeout(s, CLAIM_POLL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        s.claimed.insert(id);
        Some(Claim { backlog: self, id })
    }

    /// Waits `pause` (the engine's queue was full) unless `stop` is set first.
    pub(crate) fn wait(&self, stop: &AtomicBool, pause: Duration) {
        let until = Instant::now() + pause;
        let mut s = self.lock();
        while !stop.load(Ordering::Acquire) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .wake
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Wakes every waiter, after `stop` was set: taking the lock first means a waiter has either seen the flag or is
    /// waiting and gets the notification.
    pub(crate) fn wake_all(&self) {
        let _s = self.lock();
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_only_at_the_newest_generation_and_skips_settled_pages()
    -> Result<(), optimem_store::StoreError> {
        let b = Backlog::default();
        let s = Scope::user("u")?;
        let (p, q) = (PageId::new(), PageId::new());
        let stop = AtomicBool::new(false);
        b.push(&s, p, 0);
        b.push(&s, q, 0);
        b.push(&s, p, 0);
        assert_eq!(b.len(), 2);
        assert_eq!(b.next(&stop), Some((s.clone(), p)));
        // Refilled while being encoded: tokens of generation 0 do not settle generation 1, and it comes up again.
        b.push(&s, p, 1);
        b.settle(&s, p, Some(0));
        assert_eq!(b.len(), 2);
        // Forgotten before its turn: skipped.
        b.settle(&s, q, None);
        assert_eq!(b.next(&stop), Some((s.clone(), p)));
        b.settle(&s, p, Some(1));
        assert_eq!(b.len(), 0);
        stop.store(true, Ordering::Release);
        b.wake_all();
        assert_eq!(b.next(&stop), None);
        Ok(())
    }

    #[test]
    fn a_claimed_page_waits_for_its_holder_unless_cancelled() {
        let b = std::sync::Arc::new(Backlog::default());
        let (p, q) = (PageId::new(), PageId::new());
        let never = AtomicBool::new(false);
        let held = b.claim(p, &never).expect("free");
        // Another page is not held up, and a cancelled waiter gives up.
        drop(b.claim(q, &never).expect("free"));
        assert!(b.claim(p, &AtomicBool::new(true)).is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                let _c = b.claim(p, &AtomicBool::new(false)).expect("released");
                tx.send(()).expect("send");
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "did not wait"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).expect("woken");
        waiter.join().expect("join");
    }
}
