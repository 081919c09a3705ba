//! Outputs of the generator: netmap-layout shared-memory rings, or a pcap file.

use std::io::Write;
use std::path::{Path, PathBuf};

use flowpeek::io::shm::{monotonic_ns, PushError, ShmProducer, ShmRegion};

/// Where frames go.
pub enum Output {
    /// Rings in /dev/shm, frames spread over them by the symmetric flow hash; with `stamp`,
    /// each slot's `ptr` field gets CLOCK_MONOTONIC ns at push time (the frame's bytes are
    /// unchanged), for `flowpeek run --latency-sample`.
    Shm {
        /// The producer.
        producer: ShmProducer,
        /// Stamp each slot.
        stamp: bool,
    },
    /// A pcap file (nanosecond timestamps).
    Pcap(std::io::BufWriter<std::fs::File>, PathBuf),
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// `shm:NAME`.
    Shm(String),
    /// `pcap:FILE`.
    Pcap(PathBuf),
}

impl std::str::FromStr for OutputSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<OutputSpec, String> {
        match s.split_once(':') {
            Some(("shm", name)) if !name.is_empty() => Ok(OutputSpec::Shm(name.into())),
            Some(("pcap", path)) if !path.is_empty() => Ok(OutputSpec::Pcap(path.into())),
            Some(("netmap", _)) => Err("netmap output needs the netmap kernel module, which this build cannot use here; use shm:NAME".into()),
            _ => Err(format!("{s:?}: expected shm:NAME or pcap:FILE")),
        }
    }
}

impl Output {
    /// Opens the output: shm rings are created (`rings` of `slots` slots).
    pub fn open(spec: &OutputSpec, rings: u32, slots: u32) -> Result<Output, String> {
        match spec {
            OutputSpec::Shm(name) => ShmRegion::create(name, rings, slots, 2048)
                .map(|producer| Output::Shm {
                    producer,
                    stamp: true,
                })
                .map_err(|e| e.to_string()),
            OutputSpec::Pcap(path) => {
                let f =
                    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                // Nanosecond pcap, Ethernet, snaplen 65535.
                let mut h = Vec::with_capacity(24);
                h.extend(0xa1b2_3c4du32.to_le_bytes());
                h.extend(2u16.to_le_bytes());
                h.extend(4u16.to_le_bytes());
                h.extend([0u8; 8]);
                h.extend(65535u32.to_le_bytes());
                h.extend(1u32.to_le_bytes());
                w.write_all(&h)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Output::Pcap(w, path.clone()))
            }
        }
    }

    /// Sends one frame; `Ok(false)` when a ring was full (counted by the producer).
    pub fn send(&mut self, frame: &[u8], ts_ns: u64) -> Result<bool, String> {
        self.send_to(frame, ts_ns).map(|r| r.is_ok())
    }

    /// Sends one frame; `Ok(Err(ring))` when ring `ring` was full (counted by the producer).
    pub fn send_to(&mut self, frame: &[u8], ts_ns: u64) -> Result<Result<(), usize>, String> {
        match self {
            Output::Shm { producer, stamp } => match if *stamp {
                producer.push_hashed_stamped(frame, monotonic_ns())
            } else {
                producer.push_hashed(frame)
            } {
                Ok(_) => Ok(Ok(())),
                Err(PushError::Full { ring }) => Ok(Err(ring)),
                Err(e) => Err(e.to_string()),
            },
            Output::Pcap(w, path) => {
                let mut rec = [0u8; 16];
                rec[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
                rec[4..8].copy_from_slice(&((ts_ns % 1_000_000_000) as u32).to_le_bytes());
                rec[8..12].copy_from_slice(&(frame.len() as u32).to_le_bytes());
                rec[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
                w.write_all(&rec)
                    .and_then(|_| w.write_all(frame))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Ok(()))
            }
        }
    }

    /// Frames refused by full rings so far.
    pub fn full(&self) -> u64 {
        self.full_per_ring().iter().sum()
    }

    /// Rings (1 for a file).
    pub fn rings(&self) -> usize {
        match self {
            Output::Shm { producer, .. } => producer.region().rings(),
            Output::Pcap(..) => 1,
        }
    }

    /// Push attempts refused by each full ring so far (empty for a file).
    pub fn full_per_ring(&self) -> Vec<u64> {
        match self {
            Output::Shm { producer: p, .. } => {
                (0..p.region().rings()).map(|r| p.full_count(r)).collect()
            }
            Output::Pcap(..) => Vec::new(),
        }
    }

    /// shm: waits until a consumer polls every ring (see `ShmProducer::wait_for_consumer`);
    /// false after `timeout`. A pcap output has nobody to wait for.
    pub fn wait_for_consumer(&self, timeout: std::time::Duration) -> bool {
        match self {
            Output::Shm { producer, .. } => producer.wait_for_consumer(timeout),
            Output::Pcap(..) => true,
        }
    }

    /// Stamp shm slots with the push time (default on; no effect on a file).
    pub fn set_stamp(&mut self, on: bool) {
        if let Output::Shm { stamp, .. } = self {
            *stamp = on;
        }
    }

    /// Flushes a file output.
    pub fn finish(&mut self) -> Result<(), String> {
        match self {
            Output::Pcap(w, path) => w.flush().map_err(|e| format!("{}: {e}", path.display()))?,
            Output::Shm { producer, .. } => producer.flush(),
        }
        Ok(())
    }

    /// shm: publish each ring's frames in batches of `n` (see
    /// `ShmProducer::set_publish_every`); [`flush`](Self::flush) shows the rest.
    pub fn set_publish_every(&mut self, n: u32) {
        if let Output::Shm { producer, .. } = self {
            producer.set_publish_every(n);
        }
    }

    /// shm: publishes every frame written so far.
    pub fn flush(&mut self) {
        if let Output::Shm { producer, .. } = self {
            producer.flush();
        }
    }

    /// The file behind the output.
    pub fn path(&self) -> &Path {
        match self {
            Output::Shm { producer, .. } => producer.region().path(),
            Output::Pcap(_, path) => path,
        }
    }
}
