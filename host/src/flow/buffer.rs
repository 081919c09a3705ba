//! The receive buffer of one side: a window `[head, head + capacity)` of the stream.
//!
//! Bytes live in a ring indexed by `offset % storage`, where the storage starts small
//! ([`INITIAL_STORAGE`]) and doubles, up to the capacity, when a write needs more room
//! than it has (most connections are short: a 256 KiB window costs them 4 KiB of memory and
//! no page faults); what is stored is a sorted list of
//! disjoint fragments `[start, end)` in a fixed array, so a flood of tiny out-of-order
//! segments cannot grow it (the engine counts what the bound drops). The buffer knows
//! nothing about events: the engine decides when the head may advance and tells monitors.
//!
//! Also here: the [`BufferPool`], which hands out buffers within the engine's
//! `buffer_memory` budget and keeps freed ones for reuse. The budget counts the memory a
//! buffer holds (its storage), not its window: a new buffer is charged its initial
//! storage, a write that grows the storage is charged the growth (and refused when the
//! budget has no room for it), and a freed buffer gives its storage back. Must not: know
//! about flows, sides or events (callers say how many bytes are in use).

/// At most this many disjoint fragments per side; a segment that would need one more is
/// dropped and counted.
pub const MAX_FRAGMENTS: usize = 32;

/// The storage a new buffer starts with (less if its capacity is smaller).
pub(crate) const INITIAL_STORAGE: usize = 4096;

/// Which copy wins when a segment overlaps bytes already stored (SPEC §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverlapPolicy {
    /// Keep the bytes already stored (default).
    #[default]
    First,
    /// Overwrite with the newest copy.
    Last,
}

/// What a write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WriteOutcome {
    /// Bytes of the segment that were already stored.
    pub(crate) overlap: u64,
    /// Bytes newly stored.
    pub(crate) new: u64,
    /// The segment needed a fragment beyond [`MAX_FRAGMENTS`] and was dropped.
    pub(crate) fragment_limit: bool,
    /// The segment needed more storage than the budget had room for and was dropped.
    pub(crate) refused: bool,
    /// Bytes the storage grew by (to be charged to the budget).
    pub(crate) grown: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Fragment {
    start: u64,
    end: u64,
}

/// One side's receive buffer.
///
/// `contig` is the end of the in-order data. It normally is the end of the fragment that
/// starts at `head`, but a gap the receiver acknowledged (lost to the capture, never to be
/// retransmitted) can be *skipped*: `contig` then moves past it while the bytes before the
/// gap stay readable. Readers learn of the skipped bytes from `peek` (`Lost`).
pub(crate) struct RecvBuffer {
    /// The ring: `offset % data.len()`; grows up to `cap`.
    data: Box<[u8]>,
    /// The window's size.
    cap: u64,
    head: u64,
    contig: u64,
    frags: [Fragment; MAX_FRAGMENTS],
    nfrags: usize,
}

impl RecvBuffer {
    /// An empty buffer of `capacity` bytes (at least 1) whose window starts at `head`.
    pub(crate) fn new(capacity: usize, head: u64) -> RecvBuffer {
        let cap = capacity.max(1);
        RecvBuffer {
            data: vec![0u8; cap.min(INITIAL_STORAGE)].into_boxed_slice(),
            cap: cap as u64,
            head,
            contig: head,
            frags: [Fragment::default(); MAX_FRAGMENTS],
            nfrags: 0,
        }
    }

    /// Empties a recycled buffer and moves its window to `head`.
    pub(crate) fn reset(&mut self, head: u64) {
        self.head = head;
        self.contig = head;
        self.nfrags = 0;
    }

    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.cap
    }

    /// Bytes of memory the ring holds now (at most the capacity): what the budget is
    /// charged for this buffer.
    #[inline]
    pub(crate) fn storage(&self) -> usize {
        self.data.len()
    }

    /// Gives back grown storage (a freed buffer goes to the pool small); returns the
    /// bytes released.
    pub(crate) fn shrink(&mut self) -> u64 {
        let small = (self.cap as usize).min(INITIAL_STORAGE);
        let before = self.data.len();
        if before <= small {
            return 0;
        }
        self.nfrags = 0;
        self.data = vec![0u8; small].into_boxed_slice();
        (before - small) as u64
    }

    /// Makes the ring big enough for every stored byte and `[head, end)`: doubles it (at
    /// least), up to the capacity, moving the stored fragments to their new positions.
    /// Returns the bytes it grew by, or `None` when that would be more than `room`.
    #[inline]
    fn make_room(&mut self, end: u64, room: u64) -> Option<u64> {
        let need = end.max(self.last_end()) - self.head;
        if need > self.data.len() as u64 {
            return self.grow(need, room);
        }
        Some(0)
    }

    #[cold]
    fn grow(&mut self, need: u64, room: u64) -> Option<u64> {
        let len = need
            .max(2 * self.data.len() as u64)
            .next_power_of_two()
            .min(self.cap) as usize;
        let grown = (len - self.data.len()) as u64;
        if grown > room {
            return None;
        }
        let old = std::mem::replace(&mut self.data, vec![0u8; len].into_boxed_slice());
        let old_len = old.len() as u64;
        for f in &self.frags[..self.nfrags] {
            let mut off = f.start;
            while off < f.end {
                let pos = (off % old_len) as usize;
                let n = ((f.end - off) as usize).min(old.len() - pos);
                let to = (off % len as u64) as usize;
                let m = n.min(len - to);
                self.data[to..to + m].copy_from_slice(&old[pos..pos + m]);
                off += m as u64;
            }
        }
        Some(grown)
    }

    /// The oldest offset the window can hold.
    #[inline]
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// End of the contiguous data (equal to `head` when there is none).
    #[inline]
    pub(crate) fn contig_end(&self) -> u64 {
        self.contig
    }

    /// Moves `contig` through every fragment that now touches it.
    fn extend_contig(&mut self) {
        for f in &self.frags[..self.nfrags] {
            if f.start <= self.contig && f.end > self.contig {
                self.contig = f.end;
            } else if f.start > self.contig {
                break;
            }
        }
    }

    /// Declares `[contig, to)` missing: the in-order data continues at `to`.
    pub(crate) fn skip_to(&mut self, to: u64) {
        if to > self.contig {
            self.contig = to;
            self.extend_contig();
        }
    }

    /// Where the next in-order read at `cursor` stands: `Ok(n)` stored bytes up to the
    /// contiguous end, or `Err(n)` bytes of a skipped gap.
    pub(crate) fn readable_at(&self, cursor: u64) -> Result<u64, u64> {
        if cursor >= self.contig {
            return Ok(0);
        }
        for f in &self.frags[..self.nfrags] {
            if f.start <= cursor && cursor < f.end {
                return Ok(f.end.min(self.contig) - cursor);
            }
            if f.start > cursor {
                return Err(f.start.min(self.contig) - cursor);
            }
        }
        Err(self.contig - cursor)
    }

    /// End of the last stored fragment (equal to `head` when empty).
    pub(crate) fn last_end(&self) -> u64 {
        if self.nfrags == 0 {
            self.head
        } else {
            self.frags[self.nfrags - 1].end
        }
    }

    /// The stored fragments as `(offset, len)`, in offset order.
    pub(crate) fn fragments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.frags[..self.nfrags]
            .iter()
            .map(|f| (f.start, f.end - f.start))
    }

    /// Start of the first stored fragment after the contiguous data, if any.
    pub(crate) fn first_gap_end(&self) -> Option<u64> {
        self.frags[..self.nfrags]
            .iter()
            .map(|f| f.start)
            .find(|&s| s > self.contig)
    }

    /// Copies the bytes at `[off, off + buf.len())` that are stored in the fragment holding
    /// `off`; returns how many, or `None` when no byte at `off` is stored.
    pub(crate) fn read(&self, off: u64, buf: &mut [u8]) -> Option<usize> {
        let frag = self.frags[..self.nfrags]
            .iter()
            .find(|f| f.start <= off && off < f.end)?;
        let n = (frag.end - off).min(buf.len() as u64) as usize;
        let (a, b) = self.slices(off, n);
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..n].copy_from_slice(b);
        Some(n)
    }

    /// The stored bytes `[off, off + len)` as at most two slices (the ring may wrap).
    /// The caller guarantees the range lies inside one fragment.
    pub(crate) fn slices(&self, off: u64, len: usize) -> (&[u8], &[u8]) {
        let cap = self.data.len();
        let pos = (off % cap as u64) as usize;
        let first = len.min(cap - pos);
        (&self.data[pos..pos + first], &self.data[..len - first])
    }

    /// Moves the window so that it starts at `new_head`, discarding older bytes.
    pub(crate) fn advance_head(&mut self, new_head: u64) {
        if new_head <= self.head {
            return;
        }
        self.head = new_head;
        self.contig = self.contig.max(new_head);
        let mut keep = 0;
        for i in 0..self.nfrags {
            let mut f = self.frags[i];
            if f.end <= new_head {
                continue;
            }
            f.start = f.start.max(new_head);
            self.frags[keep] = f;
            keep += 1;
        }
        self.nfrags = keep;
    }

    /// Stores `bytes` at `off`, growing the storage by at most `room` bytes (the budget's
    /// headroom; the outcome says how much it grew, or that it was refused). The caller has
    /// clipped the segment to the window: `head <= off` and `off + bytes.len() <= head +
    /// capacity`.
    pub(crate) fn write(
        &mut self,
        off: u64,
        bytes: &[u8],
        policy: OverlapPolicy,
        room: u64,
    ) -> WriteOutcome {
        let end = off + bytes.len() as u64;
        debug_assert!(off >= self.head && end <= self.head + self.capacity());
        if bytes.is_empty() {
            return WriteOutcome::default();
        }
        let Some(grown) = self.make_room(end, room) else {
            return WriteOutcome {
                refused: true,
                ..WriteOutcome::default()
            };
        };
        // Fragments [lo, hi) touch or overlap the new segment.
        let lo = self.frags[..self.nfrags].partition_point(|f| f.end < off);
        let hi = self.frags[..self.nfrags].partition_point(|f| f.start <= end);
        if lo == hi && self.nfrags == MAX_FRAGMENTS {
            return WriteOutcome {
                fragment_limit: true,
                grown,
                ..WriteOutcome::default()
            };
        }
        let mut overlap = 0;
        match policy {
            OverlapPolicy::Last => {
                for f in &self.frags[lo..hi] {
                    overlap += f.end.min(end).saturating_sub(f.start.max(off));
                }
                self.copy_in(off, bytes);
            }
            OverlapPolicy::First => {
                // Copy only the holes between the stored fragments.
                let mut cursor = off;
                for i in lo..hi {
                    let f = self.frags[i];
                    if f.start > cursor {
                        let hole_end = f.start.min(end);
                        self.copy_in(
                            cursor,
                            &bytes[(cursor - off) as usize..(hole_end - off) as usize],
                        );
                    }
                    overlap += f.end.min(end).saturating_sub(f.start.max(off));
                    cursor = cursor.max(f.end);
                }
                if cursor < end {
                    self.copy_in(cursor, &bytes[(cursor - off) as usize..]);
                }
            }
        }
        // Merge [lo, hi) and the segment into one fragment.
        let merged = if lo < hi {
            Fragment {
                start: self.frags[lo].start.min(off),
                end: self.frags[hi - 1].end.max(end),
            }
        } else {
            Fragment { start: off, end }
        };
        let removed = hi - lo;
        if removed == 0 {
            self.frags.copy_within(lo..self.nfrags, lo + 1);
            self.nfrags += 1;
        } else if removed > 1 {
            self.frags.copy_within(hi..self.nfrags, lo + 1);
            self.nfrags -= removed - 1;
        }
        self.frags[lo] = merged;
        self.extend_contig();
        WriteOutcome {
            overlap,
            new: bytes.len() as u64 - overlap,
            fragment_limit: false,
            refused: false,
            grown,
        }
    }

    fn copy_in(&mut self, off: u64, bytes: &[u8]) {
        let cap = self.data.len();
        let pos = (off % cap as u64) as usize;
        let first = bytes.len().min(cap - pos);
        self.data[pos..pos + first].copy_from_slice(&bytes[..first]);
        self.data[..bytes.len() - first].copy_from_slice(&bytes[first..]);
    }

    /// Bytes of `[off, end)` already stored (for overlap accounting without writing).
    pub(crate) fn stored_within(&self, off: u64, end: u64) -> u64 {
        self.frags[..self.nfrags]
            .iter()
            .map(|f| f.end.min(end).saturating_sub(f.start.max(off)))
            .sum()
    }
}

/// Bytes of freed buffers kept for reuse, at most (and never beyond `buffer_memory`).
const POOL_BYTES: u64 = 64 << 20;

/// Freed receive buffers by capacity, reused before allocating. The storage of buffers in
/// use plus buffers pooled never exceeds the budget (`buffer_memory`); the bytes in use are
/// the caller's counter (`Stats::buffer_bytes`), passed in.
pub(crate) struct BufferPool {
    // The boxes move between sides and this pool without copying the buffers.
    #[allow(clippy::vec_box)]
    by_cap: Vec<(u64, Vec<Box<RecvBuffer>>)>,
    /// Bytes pooled.
    bytes: u64,
    /// The budget: bytes in use plus bytes pooled, at most.
    limit: u64,
}

impl BufferPool {
    /// An empty pool for a budget of `limit` bytes.
    pub(crate) fn new(limit: u64) -> BufferPool {
        BufferPool {
            by_cap: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// A buffer of `cap` bytes whose window starts at `head`, its initial storage counted
    /// into `in_use`; `None` when the budget is exhausted. A pooled buffer of that size is
    /// reused.
    pub(crate) fn alloc(
        &mut self,
        cap: u32,
        head: u64,
        in_use: &mut u64,
    ) -> Option<Box<RecvBuffer>> {
        let cap64 = u64::from(cap);
        let initial = cap64.clamp(1, INITIAL_STORAGE as u64);
        if *in_use + initial > self.limit {
            return None;
        }
        *in_use += initial;
        if let Some(mut b) = self.take(cap64) {
            b.reset(head);
            return Some(b);
        }
        // A new buffer: pooled ones of other sizes make room first.
        if *in_use + self.bytes > self.limit {
            self.clear();
        }
        Some(Box::new(RecvBuffer::new(cap as usize, head)))
    }

    /// Returns a buffer that was counted into `in_use`: uncounts its storage and keeps it
    /// (shrunk to its initial storage) if the pool and the budget allow.
    pub(crate) fn free(&mut self, b: Box<RecvBuffer>, in_use: &mut u64) {
        *in_use = in_use.saturating_sub(b.storage() as u64);
        self.recycle(b, *in_use);
    }

    /// Headroom for growing a buffer in use: the budget minus what is in use. Pooled
    /// buffers give way ([`BufferPool::charge`]).
    #[inline]
    pub(crate) fn room(&self, in_use: u64) -> u64 {
        self.limit.saturating_sub(in_use)
    }

    /// Counts `grown` bytes of storage into `in_use`; empties the pool if in use plus
    /// pooled would pass the budget.
    #[inline]
    pub(crate) fn charge(&mut self, grown: u64, in_use: &mut u64) {
        if grown > 0 {
            *in_use += grown;
            if *in_use + self.bytes > self.limit {
                self.clear();
            }
        }
    }

    /// Keeps `b` (not counted in `in_use`), shrunk to its initial storage, if the pool and
    /// the budget (`limit` minus `in_use`) allow.
    pub(crate) fn recycle(&mut self, mut b: Box<RecvBuffer>, in_use: u64) {
        let cap = b.capacity();
        b.shrink();
        let size = b.storage() as u64;
        if self.bytes + size > POOL_BYTES.min(self.limit.saturating_sub(in_use)) {
            return;
        }
        let i = match self.by_cap.iter().position(|(c, _)| *c == cap) {
            Some(i) => i,
            None => {
                self.by_cap.push((cap, Vec::new()));
                self.by_cap.len() - 1
            }
        };
        self.by_cap[i].1.push(b);
        self.bytes += size;
    }

    fn take(&mut self, cap: u64) -> Option<Box<RecvBuffer>> {
        let b = self
            .by_cap
            .iter_mut()
            .find(|(c, _)| *c == cap)
            .and_then(|(_, v)| v.pop())?;
        self.bytes -= b.storage() as u64;
        Some(b)
    }

    fn clear(&mut self) {
        self.by_cap.clear();
        self.bytes = 0;
    }

    /// Bytes pooled (not in use).
    #[cfg(test)]
    pub(crate) fn pooled(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No budget limit on growth.
    const ROOM: u64 = u64::MAX;

    fn pattern(off: u64) -> u8 {
        (off.wrapping_mul(0x9e37_79b9) >> 13) as u8
    }

    #[test]
    fn storage_grows_on_demand_and_keeps_every_stored_byte() {
        let cap = 1 << 16;
        // The head sits just before a multiple of the initial storage, so fragments wrap
        // in the small ring before it grows.
        let head = 10 * INITIAL_STORAGE as u64 - 100;
        let mut b = RecvBuffer::new(cap, head);
        assert_eq!(b.storage(), INITIAL_STORAGE);
        let seg = |off: u64, len: u64| -> Vec<u8> { (off..off + len).map(pattern).collect() };
        // In order within the first 4 KiB (wrapping in the small ring), then a fragment far
        // ahead that needs 16 KiB, then one that needs the whole window.
        b.write(head, &seg(head, 3000), OverlapPolicy::First, ROOM);
        assert_eq!(b.storage(), INITIAL_STORAGE);
        b.write(
            head + 9000,
            &seg(head + 9000, 5000),
            OverlapPolicy::First,
            ROOM,
        );
        assert_eq!(b.storage(), 16384);
        b.write(
            head + 60_000,
            &seg(head + 60_000, 5536),
            OverlapPolicy::First,
            ROOM,
        );
        assert_eq!(b.storage(), cap);
        for (start, len) in [(head, 3000u64), (head + 9000, 5000), (head + 60_000, 5536)] {
            let mut out = vec![0u8; len as usize];
            assert_eq!(b.read(start, &mut out), Some(len as usize));
            assert_eq!(out, seg(start, len), "fragment at {start}");
        }
        // A short stream never grows: 4 KiB, not 64.
        let mut small = RecvBuffer::new(cap, 0);
        small.write(0, &seg(0, 1000), OverlapPolicy::First, ROOM);
        assert_eq!(small.storage(), INITIAL_STORAGE);
        // Capacity smaller than the initial storage.
        assert_eq!(RecvBuffer::new(100, 0).storage(), 100);
    }

    fn frags(b: &RecvBuffer) -> Vec<(u64, u64)> {
        b.fragments().collect()
    }

    #[test]
    fn in_order_and_out_of_order_merge() {
        let mut b = RecvBuffer::new(16, 0);
        assert_eq!(b.write(4, b"efgh", OverlapPolicy::First, ROOM).new, 4);
        assert_eq!(b.contig_end(), 0);
        assert_eq!(b.first_gap_end(), Some(4));
        b.write(0, b"abcd", OverlapPolicy::First, ROOM);
        assert_eq!(frags(&b), vec![(0, 8)]);
        assert_eq!(b.contig_end(), 8);
        let mut out = [0u8; 16];
        assert_eq!(b.read(2, &mut out), Some(6));
        assert_eq!(&out[..6], b"cdefgh");
        assert_eq!(b.read(8, &mut out), None);
    }

    #[test]
    fn overlap_policies() {
        for (policy, want) in [
            (OverlapPolicy::First, b"abcdXYgh"),
            (OverlapPolicy::Last, b"abZZZZgh"),
        ] {
            let mut b = RecvBuffer::new(16, 0);
            b.write(0, b"abcd", policy, ROOM);
            b.write(4, b"XY", policy, ROOM);
            b.write(6, b"gh", policy, ROOM);
            let o = b.write(2, b"ZZZZ", policy, ROOM);
            assert_eq!(o.overlap, 4);
            assert_eq!(o.new, 0);
            let mut out = [0u8; 8];
            assert_eq!(b.read(0, &mut out), Some(8));
            assert_eq!(&out, want, "{policy:?}");
        }
    }

    #[test]
    fn first_policy_fills_only_holes() {
        let mut b = RecvBuffer::new(32, 0);
        b.write(2, b"cc", OverlapPolicy::First, ROOM);
        b.write(6, b"gg", OverlapPolicy::First, ROOM);
        let o = b.write(0, b"0123456789", OverlapPolicy::First, ROOM);
        assert_eq!((o.overlap, o.new), (4, 6));
        let mut out = [0u8; 10];
        b.read(0, &mut out);
        assert_eq!(&out, b"01cc45gg89");
        assert_eq!(frags(&b), vec![(0, 10)]);
    }

    #[test]
    fn ring_wraps_and_head_advances() {
        let mut b = RecvBuffer::new(8, 0);
        b.write(0, b"abcdefgh", OverlapPolicy::First, ROOM);
        b.advance_head(6);
        assert_eq!(frags(&b), vec![(6, 2)]);
        b.write(8, b"ijklmn", OverlapPolicy::First, ROOM);
        let mut out = [0u8; 8];
        assert_eq!(b.read(6, &mut out), Some(8));
        assert_eq!(&out, b"ghijklmn");
        let (x, y) = b.slices(6, 8);
        assert_eq!([x, y].concat(), b"ghijklmn");
    }

    #[test]
    fn skipped_gap_keeps_earlier_bytes() {
        let mut b = RecvBuffer::new(64, 0);
        b.write(0, b"abcd", OverlapPolicy::First, ROOM);
        b.write(8, b"ijkl", OverlapPolicy::First, ROOM);
        assert_eq!(b.contig_end(), 4);
        assert_eq!(b.first_gap_end(), Some(8));
        b.skip_to(8);
        assert_eq!(b.contig_end(), 12);
        assert_eq!(b.first_gap_end(), None);
        assert_eq!(b.readable_at(0), Ok(4));
        assert_eq!(b.readable_at(4), Err(4));
        assert_eq!(b.readable_at(8), Ok(4));
        assert_eq!(b.readable_at(12), Ok(0));
        let mut out = [0u8; 4];
        assert_eq!(b.read(0, &mut out), Some(4));
        // An acknowledged gap beyond every fragment.
        b.skip_to(20);
        assert_eq!(b.readable_at(12), Err(8));
        b.write(20, b"uv", OverlapPolicy::First, ROOM);
        assert_eq!(b.contig_end(), 22);
    }

    #[test]
    fn fragment_limit_drops_instead_of_growing() {
        let mut b = RecvBuffer::new(4096, 0);
        for i in 0..MAX_FRAGMENTS as u64 {
            assert!(
                !b.write(1 + i * 4, b"x", OverlapPolicy::First, ROOM)
                    .fragment_limit
            );
        }
        assert!(
            b.write(1000, b"y", OverlapPolicy::First, ROOM)
                .fragment_limit
        );
        // A segment touching an existing fragment still merges.
        assert!(!b.write(2, b"z", OverlapPolicy::First, ROOM).fragment_limit);
        assert_eq!(b.fragments().count(), MAX_FRAGMENTS);
    }

    #[test]
    fn bridging_segment_merges_many() {
        let mut b = RecvBuffer::new(64, 0);
        b.write(10, b"aa", OverlapPolicy::First, ROOM);
        b.write(20, b"bb", OverlapPolicy::First, ROOM);
        b.write(30, b"cc", OverlapPolicy::First, ROOM);
        b.write(40, b"dd", OverlapPolicy::First, ROOM);
        b.write(12, &[b'-'; 20], OverlapPolicy::First, ROOM);
        assert_eq!(frags(&b), vec![(10, 22), (40, 2)]);
    }

    #[test]
    fn pool_stays_within_the_budget() {
        let mut pool = BufferPool::new(10_000);
        let mut in_use = 0;
        let a = pool.alloc(4000, 0, &mut in_use).expect("fits");
        let b = pool.alloc(4000, 0, &mut in_use).expect("fits");
        assert_eq!(in_use, 8000);
        // A third would pass the budget.
        assert!(pool.alloc(4000, 0, &mut in_use).is_none());
        assert_eq!(in_use, 8000);
        pool.free(a, &mut in_use);
        assert_eq!((in_use, pool.pooled()), (4000, 4000));
        pool.free(b, &mut in_use);
        assert_eq!((in_use, pool.pooled()), (0, 8000));
        // Pooled bytes count against the budget too: reuse, not a new allocation.
        let _c = pool.alloc(4000, 0, &mut in_use).expect("reused");
        assert_eq!((in_use, pool.pooled()), (4000, 4000));
        assert!(in_use + pool.pooled() <= 10_000);
    }

    #[test]
    fn pool_keeps_at_most_pool_bytes() {
        let mut pool = BufferPool::new(1 << 30);
        let mut in_use = 0;
        let cap = INITIAL_STORAGE as u32;
        let n = POOL_BYTES / u64::from(cap) + 1;
        let bufs: Vec<_> = (0..n)
            .map(|_| pool.alloc(cap, 0, &mut in_use).unwrap())
            .collect();
        for b in bufs {
            pool.free(b, &mut in_use);
        }
        assert_eq!(in_use, 0);
        assert_eq!(pool.pooled(), POOL_BYTES, "the last one was dropped");
    }

    #[test]
    fn pool_reuses_a_buffer_of_the_same_size_reset() {
        let mut pool = BufferPool::new(1 << 20);
        let mut in_use = 0;
        let mut a = pool.alloc(1000, 0, &mut in_use).unwrap();
        a.write(0, b"hello", OverlapPolicy::First, ROOM);
        let addr = &*a as *const RecvBuffer;
        pool.free(a, &mut in_use);
        let b = pool.alloc(1000, 500, &mut in_use).unwrap();
        assert_eq!(&*b as *const RecvBuffer, addr, "the pooled box comes back");
        assert_eq!(
            (b.head(), b.contig_end(), b.fragments().count()),
            (500, 500, 0)
        );
        assert_eq!(pool.pooled(), 0);
        // Another size is a new buffer; the pool of other sizes gives way when needed.
        let c = pool.alloc(2000, 0, &mut in_use).unwrap();
        assert_eq!(c.capacity(), 2000);
        assert_eq!(in_use, 3000);
    }

    #[test]
    fn new_buffer_clears_pooled_ones_that_would_pass_the_budget() {
        let mut pool = BufferPool::new(3000);
        let mut in_use = 0;
        let a = pool.alloc(1000, 0, &mut in_use).unwrap();
        pool.free(a, &mut in_use);
        assert_eq!(pool.pooled(), 1000);
        let _b = pool.alloc(2500, 0, &mut in_use).unwrap();
        assert_eq!(pool.pooled(), 0, "in use + pooled would be 3500 > 3000");
    }

    #[test]
    fn budget_charges_storage_not_window() {
        // Four 256 KiB windows in a 64 KiB budget: each holds 4 KiB until it grows.
        let mut pool = BufferPool::new(64 << 10);
        let mut in_use = 0;
        let mut bufs: Vec<_> = (0..4)
            .map(|_| pool.alloc(256 << 10, 0, &mut in_use).expect("4 KiB each"))
            .collect();
        assert_eq!(in_use, 4 * INITIAL_STORAGE as u64);
        // A byte 40 KiB ahead needs 64 KiB of storage: more than the room left.
        let far = 40 << 10;
        let out = bufs[0].write(far, b"x", OverlapPolicy::First, pool.room(in_use));
        assert!(out.refused && out.grown == 0);
        assert_eq!(bufs[0].storage(), INITIAL_STORAGE);
        // 20 KiB ahead needs 32 KiB: it fits, and is charged.
        let out = bufs[1].write(20 << 10, b"y", OverlapPolicy::First, pool.room(in_use));
        assert!(!out.refused);
        assert_eq!(out.grown, (32 << 10) - INITIAL_STORAGE as u64);
        pool.charge(out.grown, &mut in_use);
        assert_eq!(in_use, 3 * INITIAL_STORAGE as u64 + (32 << 10));
        // Freeing gives back what it held, and the pool keeps it small.
        let b = bufs.remove(1);
        pool.free(b, &mut in_use);
        assert_eq!(in_use, 3 * INITIAL_STORAGE as u64);
        assert_eq!(pool.pooled(), INITIAL_STORAGE as u64);
    }
}
