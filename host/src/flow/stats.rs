//! The counters of one engine ([`Stats`]) and how the cores' counters add up.
//!
//! Owns: the counter fields and [`Stats::merge`]. Must not: decide anything; the engine's
//! parts increment the counters, nothing here reads them back.

/// Counters of one engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the engine.
    pub packets: u64,
    /// Their captured bytes.
    pub bytes: u64,
    /// TCP segments processed.
    pub tcp_packets: u64,
    /// Frames that failed to decode.
    pub malformed: u64,
    /// Frames that are not TCP (ARP, UDP, ...).
    pub not_tcp: u64,
    /// IP fragments of TCP handed to the defragmenter.
    pub ip_fragments: u64,
    /// Frames of a link type the decoder does not support.
    pub unsupported_link: u64,
    /// Segments with a wrong TCP (or IPv4 header) checksum, dropped (`verify_checksums`).
    pub bad_checksum: u64,
    /// Packets cut by snaplen and dropped (`Config::drop_truncated`).
    pub truncated_dropped: u64,
    /// Packets that matched no flow and could not start one.
    pub orphans: u64,
    /// Flows not tracked because no filter matched their first packet (the `--filter`, or
    /// every monitor's own). A refused flow is not remembered: with mid-stream pick-up each
    /// later packet of it is refused again, and counted again.
    pub filtered: u64,
    /// Flows created.
    pub flows_created: u64,
    /// Flows created mid-stream (no SYN seen).
    pub flows_partial: u64,
    /// Flows evicted because the table was full.
    pub flows_evicted: u64,
    /// Flows that expired idle.
    pub flows_timed_out: u64,
    /// RSTs ignored because their sequence number was outside the window.
    pub rst_ignored: u64,
    /// Payload bytes dropped because they lay beyond the receive window.
    pub bytes_beyond_window: u64,
    /// Segments dropped because a side's fragment list was full.
    pub fragment_limit_drops: u64,
    /// Sides that got no buffer because `buffer_memory` was exhausted.
    pub buffer_memory_refusals: u64,
    /// Bytes skipped over gaps that were never filled, and bytes not stored because the
    /// budget refused a buffer (those also in `bytes_refused`).
    pub bytes_missing: u64,
    /// Packets of a connection that had already closed (matched its tombstone).
    pub late: u64,
    /// Payload bytes not stored because `buffer_memory` refused a buffer or its growth.
    pub bytes_refused: u64,
    /// Events delivered to monitors.
    pub events: u64,
    /// Flows currently tracked.
    pub flows_live: u64,
    /// Receive-buffer bytes currently allocated.
    pub buffer_bytes: u64,
    /// The defragmenter's counters (datagrams reassembled, overlaps, timeouts, evictions,
    /// drops by reason).
    pub defrag: crate::ip::Stats,
    /// Live multi-core sources: datagrams reassembled here and sent to the core of their
    /// flow (`worker::handoff`).
    pub handed_off: u64,
    /// Such datagrams dropped: their core had too many waiting, or had ended.
    pub handoff_dropped: u64,
    /// Datagrams another core reassembled for a flow of this core.
    pub handed_in: u64,
}

impl Stats {
    /// Adds another engine's counters (the cores of one run).
    pub fn merge(&mut self, other: &Stats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.tcp_packets += other.tcp_packets;
        self.malformed += other.malformed;
        self.not_tcp += other.not_tcp;
        self.ip_fragments += other.ip_fragments;
        self.unsupported_link += other.unsupported_link;
        self.bad_checksum += other.bad_checksum;
        self.truncated_dropped += other.truncated_dropped;
        self.orphans += other.orphans;
        self.filtered += other.filtered;
        self.flows_created += other.flows_created;
        self.flows_partial += other.flows_partial;
        self.flows_evicted += other.flows_evicted;
        self.flows_timed_out += other.flows_timed_out;
        self.rst_ignored += other.rst_ignored;
        self.bytes_beyond_window += other.bytes_beyond_window;
        self.fragment_limit_drops += other.fragment_limit_drops;
        self.buffer_memory_refusals += other.buffer_memory_refusals;
        self.bytes_missing += other.bytes_missing;
        self.late += other.late;
        self.bytes_refused += other.bytes_refused;
        self.events += other.events;
        self.flows_live += other.flows_live;
        self.buffer_bytes += other.buffer_bytes;
        self.defrag.add(&other.defrag);
        self.handed_off += other.handed_off;
        self.handoff_dropped += other.handoff_dropped;
        self.handed_in += other.handed_in;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_every_counter() {
        // Distinct values per field: a counter merge forgets (or adds twice) shows up.
        let one = Stats {
            packets: 1,
            bytes: 2,
            tcp_packets: 3,
            malformed: 4,
            not_tcp: 5,
            ip_fragments: 6,
            unsupported_link: 7,
            bad_checksum: 8,
            orphans: 9,
            flows_created: 10,
            flows_partial: 11,
            flows_evicted: 12,
            flows_timed_out: 13,
            rst_ignored: 14,
            bytes_beyond_window: 15,
            fragment_limit_drops: 16,
            buffer_memory_refusals: 17,
            bytes_missing: 18,
            late: 22,
            events: 19,
            flows_live: 20,
            buffer_bytes: 21,
            truncated_dropped: 22,
            defrag: crate::ip::Stats {
                reassembled: 23,
                ..crate::ip::Stats::default()
            },
            bytes_refused: 24,
            filtered: 25,
            handed_off: 26,
            handoff_dropped: 27,
            handed_in: 28,
        };
        let mut sum = Stats::default();
        sum.merge(&one);
        assert_eq!(sum, one);
        sum.merge(&one);
        assert_eq!(sum.packets, 2);
        assert_eq!(sum.buffer_bytes, 42);
        assert_eq!(sum.orphans, 18);
        assert_eq!(sum.defrag.reassembled, 46);
    }
}
