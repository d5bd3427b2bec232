//! The engine's job queue: bounded, with three lanes in priority order.
//!
//! - `Decode`: a reader waits on it (an OPTICAL recall, often streamed to a person).
//! - `Encode`: an encode someone waits on (a recall that met a page without usable tokens, a Remember under
//!   `--encode sync`), and maintenance pauses.
//! - `Background`: an encode nobody waits on (the background encoder, ageing, re-encoding stale pages).
//!
//! The worker takes the oldest job of the first non-empty lane, so a recall's encode is never queued behind background
//! work. No lane starves: each waiting lane counts the jobs taken from other lanes since it last had a turn, and once
//! that count reaches [`STREAK`] its oldest job goes next (the lane passed over longest first, the higher lane on a
//! tie). So a steady stream of recalls cannot starve Remember or the encoder, and a job at the head of its lane waits
//! at most `STREAK + 2` jobs.
//!
//! The bound covers all lanes together: a push onto a full queue fails at once (the engine's `Busy`). Background jobs
//! may only use the lower part of it: [`JobQueue::background_limit`] keeps half the slots for jobs someone waits on,
//! so background work cannot turn a recall into `Busy`.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Jobs of other lanes taken while a lane waits before that lane gets a turn.
pub const STREAK: usize = 4;

/// Which lane a job waits in, highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Decode,
    Encode,
    Background,
}

impl Lane {
    const ALL: [Lane; 3] = [Lane::Decode, Lane::Encode, Lane::Background];

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` jobs (or, for a background job, its share of them).
    Full,
    /// The worker is gone.
    Closed,
}

struct State<T> {
    /// One queue per lane, indexed by [`Lane::index`].
    lanes: [VecDeque<T>; 3],
    /// Per lane, jobs of other lanes taken while this one waited since its last turn.
    passed: [usize; 3],
    closed: bool,
}

impl<T> State<T> {
    fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// The lane whose job goes next: a lane passed over [`STREAK`] times (the longest passed over, the higher on a
    /// tie), else the first non-empty one.
    fn next_lane(&self) -> Option<Lane> {
        let waiting = Lane::ALL
            .into_iter()
            .filter(|l| !self.lanes[l.index()].is_empty());
        let starved = waiting
            .clone()
            .filter(|l| self.passed[l.index()] >= STREAK)
            // `max_by_key` keeps the last of equal keys; reversed, that is the higher lane.
            .rev()
            .max_by_key(|l| self.passed[l.index()]);
        starved.or_else(|| waiting.clone().next())
    }
}

/// A bounded three-lane queue between callers and the one worker.
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
                lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
                passed: [0; 3],
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

    /// Jobs waiting, all lanes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Jobs that may wait before a background push is refused: half the capacity, rounded up, so that the other half
    /// is always free for jobs someone waits on (with a capacity of 1 the one slot is shared).
    pub fn background_limit(&self) -> usize {
        self.capacity.div_ceil(2)
    }

    pub fn push(&self, lane: Lane, item: T) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        let limit = match lane {
            Lane::Background => self.background_limit(),
            Lane::Decode | Lane::Encode => self.capacity,
        };
        if s.len() >= limit {
            return Err(PushError::Full);
        }
        s.lanes[lane.index()].push_back(item);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(lane) = s.next_lane() {
                let taken = lane.index();
                for other in Lane::ALL.map(Lane::index) {
                    if other == taken {
                        s.passed[other] = 0;
                    } else if !s.lanes[other].is_empty() {
                        s.passed[other] += 1;
                    }
                }
                return s.lanes[taken].pop_front();
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Up to `max` more jobs of `lane` that `fits` accepts, taken from wherever they wait in it (the others keep their
    /// order): the jobs the worker runs together with the one it has just popped (decodes of one batch). The lane
    /// counters of `pop` are left as they are: these jobs ride on the turn their lane just had.
    pub fn take_matching(&self, lane: Lane, max: usize, fits: impl Fn(&T) -> bool) -> Vec<T> {
        let mut s = self.lock();
        let queue = &mut s.lanes[lane.index()];
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(queue.len());
        while let Some(item) = queue.pop_front() {
            if taken.len() < max && fits(&item) {
                taken.push(item);
            } else {
                kept.push_back(item);
            }
        }
        *queue = kept;
        taken
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
        for lane in &mut s.lanes {
            lane.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T>(q: &JobQueue<T>) -> Vec<T> {
        q.close();
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn decodes_then_waited_encodes_then_background() {
        let q = JobQueue::new(32);
        for (lane, job) in [
            (Lane::Background, "b0"),
            (Lane::Encode, "e0"),
            (Lane::Decode, "d0"),
            (Lane::Background, "b1"),
            (Lane::Encode, "e1"),
        ] {
            q.push(lane, job).expect("push");
        }
        assert_eq!(drain(&q), ["d0", "e0", "e1", "b0", "b1"]);
    }

    #[test]
    fn decodes_go_first_but_never_starve_the_other_lanes() {
        let q = JobQueue::new(32);
        for i in 0..2 {
            q.push(Lane::Background, format!("b{i}")).expect("push");
        }
        for i in 0..10 {
            q.push(Lane::Encode, format!("e{i}")).expect("push");
        }
        for i in 0..10 {
            q.push(Lane::Decode, format!("d{i}")).expect("push");
        }
        // After four jobs ahead of them, both lower lanes are due: the encode lane (higher, on a tie) goes, then the
        // background lane, which has been passed over longest.
        assert_eq!(
            drain(&q),
            [
                "d0", "d1", "d2", "d3", "e0", "b0", "d4", "d5", "d6", "e1", "b1", "d7", "d8", "d9",
                "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"
            ]
        );
    }

    #[test]
    fn a_background_job_waits_at_most_streak_plus_two_under_endless_load() {
        let q = JobQueue::new(8);
        q.push(Lane::Background, 'b').expect("push");
        q.push(Lane::Encode, 'e').expect("push");
        q.push(Lane::Decode, 'd').expect("push");
        // Every job taken from the busy lanes is replaced at once, so they never run dry.
        let mut taken = 0;
        loop {
            let job = q.pop().expect("a job");
            taken += 1;
            match job {
                'd' => q.push(Lane::Decode, 'd').expect("push"),
                'e' => q.push(Lane::Encode, 'e').expect("push"),
                _ => break,
            }
            assert!(taken <= STREAK + 2, "background starved");
        }
        assert_eq!(taken, STREAK + 2);
    }

    #[test]
    fn the_bound_covers_every_lane_and_background_jobs_get_half() {
        let q = JobQueue::new(4);
        assert_eq!(q.background_limit(), 2);
        q.push(Lane::Background, 1).expect("push");
        q.push(Lane::Background, 2).expect("push");
        assert_eq!(q.push(Lane::Background, 3), Err(PushError::Full));
        q.push(Lane::Encode, 4).expect("push");
        q.push(Lane::Decode, 5).expect("push");
        assert_eq!(q.push(Lane::Encode, 6), Err(PushError::Full));
        assert_eq!(q.push(Lane::Decode, 6), Err(PushError::Full));
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop(), Some(5));
        assert_eq!(q.pop(), Some(4));
        // Two jobs wait: still the background share.
        assert_eq!(q.push(Lane::Background, 7), Err(PushError::Full));
        q.close();
        assert_eq!(q.push(Lane::Encode, 8), Err(PushError::Closed));
        assert_eq!(drain(&q), [1, 2]);
        assert_eq!(q.pop(), None);
        // A queue of one shares its slot.
        let one = JobQueue::new(1);
        one.push(Lane::Background, 9).expect("push");
        assert_eq!(one.push(Lane::Decode, 10), Err(PushError::Full));
        one.abandon();
        assert_eq!((one.len(), one.pop()), (0, None));
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
