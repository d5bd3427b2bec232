//! The engine's job queue: bounded, with two lanes. A decode has a reader waiting on it (an OPTICAL recall, often
//! streamed to a person), while an encode is a Remember or background ageing that can wait; so the worker takes the
//! oldest decode first. After [`DECODE_STREAK`] decodes in a row it takes the oldest other job if one waits, so a
//! steady stream of recalls cannot starve Remember, and neither lane waits forever.
//!
//! The bound covers both lanes together: a push onto a full queue fails at once (the engine's `Busy`).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Decodes taken in a row before a waiting job of the other lane goes.
pub const DECODE_STREAK: usize = 4;

/// Which lane a job waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Decode,
    Other,
}

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` jobs.
    Full,
    /// The worker is gone.
    Closed,
}

struct State<T> {
    decode: VecDeque<T>,
    other: VecDeque<T>,
    /// Decodes taken since the last other job.
    streak: usize,
    closed: bool,
}

/// A bounded two-lane queue between callers and the one worker.
pub struct JobQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

impl<T> std::fmt::Debug for JobQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("waiting", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T> JobQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                decode: VecDeque::new(),
                other: VecDeque::new(),
                streak: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// The state; a panic elsewhere while it was held leaves it consistent (every change is one push or pop).
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Jobs waiting, both lanes.
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.decode.len() + s.other.len()
    }

    pub fn push(&self, lane: Lane, item: T) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        if s.decode.len() + s.other.len() >= self.capacity {
            return Err(PushError::Full);
        }
        match lane {
            Lane::Decode => s.decode.push_back(item),
            Lane::Other => s.other.push_back(item),
        }
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            let take_other =
                !s.other.is_empty() && (s.decode.is_empty() || s.streak >= DECODE_STREAK);
            if take_other {
                s.streak = 0;
                return s.other.pop_front();
            }
            if let Some(job) = s.decode.pop_front() {
                s.streak += 1;
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// No more pushes; `pop` drains what waits, then answers `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Closes the queue and drops every waiting job (their callers see their reply channels close).
    pub fn abandon(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.decode.clear();
        s.other.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_go_first_but_never_starve_the_other_lane() {
        let q = JobQueue::new(32);
        for i in 0..3 {
            q.push(Lane::Other, format!("e{i}")).expect("push");
        }
        for i in 0..6 {
            q.push(Lane::Decode, format!("d{i}")).expect("push");
        }
        q.close();
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            ["d0", "d1", "d2", "d3", "e0", "d4", "d5", "e1", "e2"]
        );
    }

    #[test]
    fn the_bound_covers_both_lanes_and_a_closed_queue_refuses() {
        let q = JobQueue::new(2);
        q.push(Lane::Other, 1).expect("push");
        q.push(Lane::Decode, 2).expect("push");
        assert_eq!(q.push(Lane::Decode, 3), Err(PushError::Full));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(2));
        q.close();
        assert_eq!(q.push(Lane::Other, 4), Err(PushError::Closed));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), None);
        let r = JobQueue::new(2);
        r.push(Lane::Other, 5).expect("push");
        r.abandon();
        assert_eq!((r.len(), r.pop()), (0, None));
    }

    #[test]
    fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(JobQueue::new(1));
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || q.pop())
        };
        q.push(Lane::Decode, 7).expect("push");
        assert_eq!(worker.join().expect("join"), Some(7));
    }
}
