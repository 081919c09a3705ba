//! What the disorder rules hold for the stream one side receives: the armed gap skip, the
//! guessed stream start, a FIN or RST beyond the contiguous end, the ACKs that came ahead
//! of the data. Data only: the rules that fill and settle it are `disorder.rs`'s.
//!
//! Owns: [`Holdback`] and [`Ctl`]. Must not: know the engine; the flow table stores one
//! `Holdback` per side.

/// A control segment held until the stream reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ctl {
    Fin,
    Rst,
    /// A RST in sequence, sent while the other direction had bytes in flight toward its
    /// sender: it lingers for the allowance, so that those bytes, which the tap may show
    /// after it, still reach the stream (SPEC §3.1). Its `u64` in [`Holdback::ctl`] is the
    /// packet time it takes effect at, at the latest.
    RstLinger,
}

/// What is held for the stream one side receives.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Holdback {
    /// Highest stream offset this side's ACKs acknowledged beyond the contiguous end at the
    /// time (0: none). Unclamped: an ACK of a FIN not seen yet is one past the data.
    pub(crate) ack_max: u64,
    /// Armed skip: declare `[contig, skip_to)` missing when `skip_left` reaches 0. It
    /// counts packets of the flow that find the stream where it was (`skip_mark`: the low
    /// bits of the contiguous end at the last count): while the gap fills, it waits.
    pub(crate) skip_to: u64,
    pub(crate) skip_left: u32,
    pub(crate) skip_mark: u32,
    /// The peer's FIN or RST beyond the contiguous end, and its stream offset (for a
    /// lingering RST: its deadline in packet time).
    pub(crate) ctl: Option<(Ctl, u64)>,
    pub(crate) ctl_left: u32,
    /// Highest acknowledgement number this side sent that was ahead of its stream (or
    /// came before the stream's first segment): a FIN it covers was acknowledged first.
    pub(crate) ack_hi: Option<u32>,
    /// The stream's start is a guess (a mid-stream flow's first segment), not a SYN.
    pub(crate) base_guess: bool,
    /// Packets of the flow left before a guessed start is final: until then its bytes are
    /// not delivered (`NewData` waits), so that a SYN, SYN/ACK or segment that the first
    /// one overtook can still move the start back.
    pub(crate) guess_left: u16,
}

impl Holdback {
    /// Something is held or armed: the flow goes through `Engine::settle`.
    pub(crate) fn pending(&self) -> bool {
        self.skip_left > 0 || self.ctl.is_some() || self.base_guess
    }
}
