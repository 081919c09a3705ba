//! The sides owed a `NewData` at the end of the batch: the receive path marks a side when
//! its contiguous data grows, once per batch; `Engine::end_batch` delivers one `NewData`
//! per mark (SPEC §2, `NewData` coalescing).
//!
//! Owns: [`NewDataMarks`]. Must not: deliver events; it only remembers who is owed one.

use super::table::{FlowIdx, FlowTable};
use super::types::Side;

/// The sides whose contiguous data grew in this batch and owe a `NewData`.
pub(crate) struct NewDataMarks {
    list: Vec<(FlowIdx, u32, Side)>,
}

impl NewDataMarks {
    pub(crate) fn new() -> NewDataMarks {
        NewDataMarks {
            list: Vec::with_capacity(1024),
        }
    }

    /// Marks `side` of flow `slot` as owed a `NewData` at the end of the batch (once).
    pub(crate) fn mark(&mut self, table: &mut FlowTable, slot: FlowIdx, side: Side) {
        let f = table.flow_mut(slot);
        let s = &mut f.sides[side.index()];
        if !s.newdata_pending {
            s.newdata_pending = true;
            self.list.push((slot, f.gen, side));
        }
    }

    /// How many sides are marked (the list may grow while it is delivered).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// The `i`th mark: (slot, generation when marked, side).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> (FlowIdx, u32, Side) {
        self.list[i]
    }

    /// The flow's sides swapped (its roles were guessed wrong): its marks follow them.
    pub(crate) fn swap_sides(&mut self, slot: FlowIdx, gen: u32) {
        for m in self.list.iter_mut().filter(|m| m.0 == slot && m.1 == gen) {
            m.2 = m.2.peer();
        }
    }

    /// Forgets every mark (after delivery).
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }
}
