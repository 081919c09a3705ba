//! Engine settings ([`Config`]); `Default` gives mOS's defaults, [`Config::mos`] mOS 0.3's
//! policies as its reference traces were recorded (shared/mos-events).
//!
//! Owns: the values an engine is built with, read-only afterwards. Must not: hold state
//! that changes while traffic flows (that is the table's, the timers', the stats').

use super::buffer::OverlapPolicy;
use crate::filter::StreamFilter;

/// Nanoseconds per second (timestamps are ns).
pub(crate) const NANOS: u64 = 1_000_000_000;

/// Engine settings. `Default` gives mOS's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// This engine's core number (stamped into flow handles).
    pub core: u8,
    /// Flow-table capacity; the least recently active flow is evicted beyond it.
    pub max_flows: u32,
    /// Receive-buffer capacity per side when a monitor asks for the default (bytes).
    pub buffer_capacity: u32,
    /// Upper bound on all receive-buffer bytes of this engine.
    pub buffer_memory: u64,
    /// Idle timeout (ns): a flow with no packet for this long expires (`Timeout`).
    pub tcp_timeout: u64,
    /// How long a flow stays in TIME_WAIT once both sides closed (ns); 0 destroys at once.
    pub tw_interval: u64,
    /// Default overlap policy of every side.
    pub overlap: OverlapPolicy,
    /// Drop packets whose TCP checksum or IPv4 header checksum is wrong (off for
    /// captures, which carry offloaded checksums).
    pub verify_checksums: bool,
    /// Drop packets cut by the capture's snapshot length (IP declares more bytes than
    /// were captured), as mOS does; off: their captured bytes are used.
    pub drop_truncated: bool,
    /// Track connections whose SYN was not seen (marked partial). Off: such packets are
    /// `Orphan`s, as in mOS.
    pub midstream: bool,
    /// IP defragmentation: bounds, timeouts and overlap policy (SPEC §Defragmentation).
    pub defrag: crate::ip::Config,
    /// Cores that read one capture together (a pcap replay, where every core sees every
    /// frame), or 0 for a source whose frames are this core's alone. With more than one,
    /// every core reassembles every fragment and processes only the datagrams of the
    /// flows its shard holds; core 0 counts the fragments.
    pub replay_cores: usize,
    /// How many more packets of a flow that find the stream where it was an ACK ahead of
    /// the data must stay ahead before the gap is declared missing (and a FIN or RST ahead
    /// of the data takes effect), and how long a guessed stream start stays open to an
    /// overtaken SYN or segment: reordering by a tap moves packets by a few dozen places.
    /// 0 skips at once.
    pub gap_skip_after: u32,
    /// How long (packet time, ns) an in-sequence RST from a side that has not received its
    /// peer's FIN lingers at most, for the peer's bytes still in flight (`--rst-linger`):
    /// bytes sent before the RST reached their sender reach a tap within about a round
    /// trip, and reordering moves packets by far less. It also ends after `gap_skip_after`
    /// packets of the flow; with `gap_skip_after` 0 a RST takes effect at once.
    pub rst_linger: u64,
    /// Closed connections remembered so that their late packets are counted, not taken
    /// for new flows (about this many; 0: none).
    pub tombstones: u32,
    /// Stream filter applied before any monitor (`--filter`): a flow whose first packet
    /// does not match is not tracked (counted in [`Stats::filtered`](super::Stats)).
    pub filter: Option<StreamFilter>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            core: 0,
            max_flows: 100_000,
            buffer_capacity: 8192,
            buffer_memory: 1 << 30,
            tcp_timeout: 30 * NANOS,
            tw_interval: 0,
            overlap: OverlapPolicy::First,
            verify_checksums: false,
            drop_truncated: false,
            midstream: true,
            defrag: crate::ip::Config::default(),
            replay_cores: 0,
            gap_skip_after: 64,
            rst_linger: NANOS,
            tombstones: 65536,
            filter: None,
        }
    }
}

impl Config {
    /// mOS 0.3's policies (`--profile mos`): no mid-stream pick-up, packets with a bad
    /// checksum or cut by snaplen dropped without an event, 8 KiB buffers, a 30 s idle
    /// timeout and no TIME_WAIT. The other fields are the defaults.
    pub fn mos() -> Config {
        Config {
            buffer_capacity: 8192,
            tcp_timeout: 30 * NANOS,
            tw_interval: 0,
            verify_checksums: true,
            drop_truncated: true,
            midstream: false,
            // mOS skips an acknowledged gap and applies a FIN at once, and raises `Orphan`
            // for a packet after the close.
            gap_skip_after: 0,
            tombstones: 0,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_mos_defaults() {
        let c = Config::default();
        assert_eq!(c.max_flows, 100_000);
        assert_eq!(c.buffer_capacity, 8192);
        assert_eq!(c.buffer_memory, 1 << 30);
        assert_eq!(c.tcp_timeout, 30 * NANOS);
        assert_eq!(c.tw_interval, 0);
        assert_eq!(c.overlap, OverlapPolicy::First);
        assert!(!c.verify_checksums);
        assert!(!c.drop_truncated);
        assert!(c.midstream);
        assert_eq!((c.gap_skip_after, c.tombstones), (64, 65536));
    }

    #[test]
    fn mos_profile_is_mos_policies() {
        let c = Config::mos();
        assert!(!c.midstream && c.verify_checksums && c.drop_truncated);
        assert_eq!(
            (c.buffer_capacity, c.tcp_timeout, c.tw_interval),
            (8192, 30 * NANOS, 0)
        );
        assert_eq!((c.gap_skip_after, c.tombstones), (0, 0));
        assert_eq!(c.max_flows, Config::default().max_flows);
    }
}
