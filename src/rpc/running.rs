//! The calls one call stream is running: by the caller's id, so that a
//! caller's cancel stops one at once; and the responder calls by deadline,
//! so that one its handler never answers is answered `"timeout"` when its
//! budget runs out. The deadlines live in the stream's reader loop rather
//! than in a task per call, so the thread that answers a call (a C, Go or
//! Python host's) has no runtime thread to wake.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::responder::Slot;

/// A call of a stream still running, as a cancel reaches it.
enum Call {
    /// A future handler's task: aborted.
    Task(tokio::task::AbortHandle),
    /// A responder's call: its slot is taken unanswered, which tells the
    /// handler (`Responder::is_abandoned`); its places come back when the
    /// handler lets go of its responder.
    Slot(Arc<Slot>),
}

impl Call {
    fn is_over(&self) -> bool {
        match self {
            Call::Task(task) => task.is_finished(),
            Call::Slot(slot) => slot.is_answered(),
        }
    }
}

/// When a responder call's budget runs out.
struct Due {
    at: Instant,
    budget: Duration,
    slot: Arc<Slot>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed, so the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

/// The calls of one stream still running.
pub(super) struct Running {
    by_id: HashMap<u64, Call>,
    due: BinaryHeap<Due>,
    /// The stream's bound of calls in flight: at most this many still run,
    /// so the maps are swept of ended calls when they hold twice as many
    /// (O(1) a call on average).
    bound: usize,
}

impl Running {
    pub(super) fn new(bound: usize) -> Running {
        Running {
            by_id: HashMap::new(),
            due: BinaryHeap::new(),
            bound: bound.max(1),
        }
    }

    fn insert(&mut self, id: u64, call: Call) {
        if self.by_id.len() >= 2 * self.bound {
            self.by_id.retain(|_, c| !c.is_over());
        }
        self.by_id.insert(id, call);
    }

    /// Adds a future handler's call.
    pub(super) fn add_task(&mut self, id: u64, task: tokio::task::AbortHandle) {
        self.insert(id, Call::Task(task));
    }

    /// Adds a responder's call, answered `"timeout"` at `now + budget`
    /// unless answered before.
    pub(super) fn add_slot(&mut self, id: u64, slot: Arc<Slot>, budget: Duration, now: Instant) {
        if self.due.len() >= 2 * self.bound {
            self.due.retain(|d| !d.slot.is_answered());
        }
        self.due.push(Due {
            at: now + budget,
            budget,
            slot: slot.clone(),
        });
        self.insert(id, Call::Slot(slot));
    }

    /// Stops call `id`; false when it was not running.
    pub(super) fn cancel(&mut self, id: u64) -> bool {
        match self.by_id.remove(&id) {
            Some(c) if !c.is_over() => {
                match c {
                    Call::Task(task) => task.abort(),
                    Call::Slot(slot) => slot.abandon(),
                }
                true
            }
            _ => false,
        }
    }

    /// The earliest deadline of a responder call not answered yet (the
    /// answered ones ahead of it are dropped).
    pub(super) fn next_due(&mut self) -> Option<Instant> {
        while let Some(d) = self.due.peek() {
            if !d.slot.is_answered() {
                return Some(d.at);
            }
            self.due.pop();
        }
        None
    }

    /// Answers `"timeout"` to every responder call whose budget ran out by
    /// `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while self.due.peek().is_some_and(|d| d.at <= now) {
            if let Some(d) = self.due.pop() {
                d.slot.overran(d.budget);
            }
        }
    }

    /// Whether every call is over (answered, abandoned or finished).
    pub(super) fn all_over(&mut self) -> bool {
        self.by_id.retain(|_, c| !c.is_over());
        self.by_id.is_empty()
    }

    /// The stream ended: its responder calls are abandoned (a later answer
    /// is dropped; their places come back with their responders), and its
    /// handler tasks are aborted with their `JoinSet`. Returns how many
    /// calls were still running: their caller can no longer get an answer.
    pub(super) fn end(&mut self) -> u64 {
        let running = self.by_id.drain().filter(|(_, c)| !c.is_over()).count();
        for d in self.due.drain() {
            d.slot.abandon();
        }
        running as u64
    }
}
