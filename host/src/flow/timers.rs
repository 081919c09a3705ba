//! Time-driven work of one engine: the monitors' one-shot timers ([`Timers`]) and which
//! flow's idle timeout or TIME_WAIT falls due next, with [`next_deadline`] saying when
//! anything does.
//!
//! Owns: the timer heap (ordered by deadline, then by setting order) and the due-queries
//! over the table's idle and TIME_WAIT lists. Must not: read a clock (the engine's `now`,
//! the packets' time, is passed in), call monitors or destroy flows (the engine does, at
//! the end of a batch).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::table::{FlowIdx, FlowTable};

/// A one-shot timer of a monitor: for a flow (`slot`, `gen`) or for the core
/// (`slot == FlowIdx::NIL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    pub(crate) deadline: u64,
    /// Setting order: timers due at once run in the order they were set.
    pub(crate) seq: u64,
    pub(crate) monitor: u32,
    pub(crate) slot: FlowIdx,
    pub(crate) gen: u32,
    pub(crate) tag: u64,
}

/// The pending timers, earliest first.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    seq: u64,
}

impl Timers {
    /// Sets a timer of `monitor` due at `deadline`.
    pub(crate) fn push(&mut self, deadline: u64, monitor: u32, slot: FlowIdx, gen: u32, tag: u64) {
        self.seq += 1;
        self.heap.push(Reverse(Timer {
            deadline,
            seq: self.seq,
            monitor,
            slot,
            gen,
            tag,
        }));
    }

    /// The setting order so far: a pass of [`pop_due`](Self::pop_due) bounded by it leaves
    /// the timers set during the pass for the next one.
    #[inline]
    pub(crate) fn mark(&self) -> u64 {
        self.seq
    }

    /// Takes the earliest timer if it is due at `now` and was set at or before `mark`.
    /// Without that bound a callback re-arming its timer with delay 0 would be popped again
    /// at once, for ever (the heap is ordered by deadline first, so a later-set timer may
    /// be at its top: it then waits, with everything behind it, for the next pass).
    #[inline]
    pub(crate) fn pop_due(&mut self, now: u64, mark: u64) -> Option<Timer> {
        let Reverse(t) = *self.heap.peek()?;
        if t.deadline > now || t.seq > mark {
            return None;
        }
        self.heap.pop();
        Some(t)
    }

    /// When the earliest timer is due.
    #[inline]
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(t)| t.deadline)
    }
}

/// The flow whose TIME_WAIT is over at `now` (the front of the TIME_WAIT list), if any.
#[inline]
pub(crate) fn due_time_wait(table: &FlowTable, now: u64) -> Option<FlowIdx> {
    let slot = table.tw_head();
    (!slot.is_nil() && table.flow(slot).tw_deadline() <= now).then_some(slot)
}

/// The flow idle for `timeout` at `now` (the front of the idle list), if any.
#[inline]
pub(crate) fn due_idle(table: &FlowTable, now: u64, timeout: u64) -> Option<FlowIdx> {
    let slot = table.lru_head();
    (!slot.is_nil() && table.flow(slot).last_ts.saturating_add(timeout) <= now).then_some(slot)
}

/// The earliest time at which a timer, a TIME_WAIT end or an idle timeout falls due
/// (`None`: nothing is pending). Ending the batch before it does nothing time-driven.
pub(crate) fn next_deadline(timers: &Timers, table: &FlowTable, timeout: u64) -> Option<u64> {
    let tw = table.tw_head();
    let tw = (!tw.is_nil()).then(|| table.flow(tw).tw_deadline());
    let idle = table.lru_head();
    let idle = (!idle.is_nil()).then(|| table.flow(idle).last_ts.saturating_add(timeout));
    [timers.next_deadline(), tw, idle]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::config::Config;
    use crate::flow::stats::Stats;
    use crate::flow::table::tests::key;

    #[test]
    fn timers_fire_by_deadline_then_setting_order() {
        let mut t = Timers::default();
        assert_eq!(t.next_deadline(), None);
        t.push(30, 0, FlowIdx::NIL, 0, 1);
        t.push(10, 1, FlowIdx::new(4), 2, 2);
        t.push(30, 2, FlowIdx::NIL, 0, 3);
        t.push(20, 0, FlowIdx::NIL, 0, 4);
        assert_eq!(t.next_deadline(), Some(10));
        assert_eq!(t.pop_due(9, t.mark()), None, "not due yet");
        fn tags(t: &mut Timers, now: u64) -> Vec<u64> {
            let mark = t.mark();
            std::iter::from_fn(|| t.pop_due(now, mark).map(|x| x.tag)).collect()
        }
        assert_eq!(tags(&mut t, 20), [2, 4]);
        assert_eq!(t.next_deadline(), Some(30));
        // Equal deadlines: the order they were set in.
        assert_eq!(tags(&mut t, 100), [1, 3]);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_timer_set_during_a_pass_waits_for_the_next() {
        let mut t = Timers::default();
        t.push(10, 0, FlowIdx::NIL, 0, 1);
        let mark = t.mark();
        assert_eq!(t.pop_due(10, mark).map(|x| x.tag), Some(1));
        // Re-armed with delay 0 from its own callback.
        t.push(10, 0, FlowIdx::NIL, 0, 2);
        assert_eq!(t.pop_due(10, mark), None, "not in the same pass");
        assert_eq!(t.pop_due(10, t.mark()).map(|x| x.tag), Some(2));
    }

    #[test]
    fn next_deadline_covers_timers_idle_and_time_wait() {
        let cfg = Config::default();
        let timeout = 1000;
        let (mut table, mut st) = (FlowTable::new(&cfg, 0), Stats::default());
        let mut timers = Timers::default();
        assert_eq!(next_deadline(&timers, &table, timeout), None);
        let (k, h) = key(1);
        let a = table.create(k, h, true, false, 100, [0, 0], std::iter::empty(), &mut st);
        assert_eq!(next_deadline(&timers, &table, timeout), Some(1100));
        assert_eq!(due_idle(&table, 1099, timeout), None);
        assert_eq!(due_idle(&table, 1100, timeout), Some(a));
        timers.push(700, 0, FlowIdx::NIL, 0, 0);
        assert_eq!(next_deadline(&timers, &table, timeout), Some(700));
        table.enter_time_wait(a, 400);
        assert_eq!(
            due_idle(&table, 5000, timeout),
            None,
            "TIME_WAIT is not idle"
        );
        assert_eq!(next_deadline(&timers, &table, timeout), Some(400));
        assert_eq!(due_time_wait(&table, 399), None);
        assert_eq!(due_time_wait(&table, 400), Some(a));
    }
}
