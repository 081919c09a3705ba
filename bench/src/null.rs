//! The null consumer: takes every frame of every ring of a shm region and releases its slot,
//! doing nothing else. Its rate is the ceiling of the ring (and of the generator feeding it)
//! on this machine: what `flowpeek run` is compared against.

use std::time::{Duration, Instant};

use flowpeek::io::shm::{monotonic_ns, ShmError, ShmRegion};
use flowpeek::worker::{latency_histogram, pin_to_cpu};
use hdrhistogram::Histogram;

/// What the null consumer saw.
#[derive(Debug)]
pub struct NullReport {
    /// Per ring: packets and bytes.
    pub per_ring: Vec<(u64, u64)>,
    /// From opening the region to the last ring drained.
    pub seconds: f64,
    /// Stamp-to-release latency of the sampled packets (ns), when sampling.
    pub latency: Option<Histogram<u64>>,
}

impl NullReport {
    /// As JSON: `{"packets", "bytes", "seconds", "cores": [{"packets", "bytes"}], "latency_ns"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let packets: u64 = self.per_ring.iter().map(|r| r.0).sum();
        let bytes: u64 = self.per_ring.iter().map(|r| r.1).sum();
        serde_json::json!({
            "packets": packets, "bytes": bytes, "seconds": self.seconds,
            "cores": self.per_ring.iter().map(|&(p, b)| serde_json::json!({"packets": p, "bytes": b})).collect::<Vec<_>>(),
            "latency_ns": self.latency.as_ref().map_or(serde_json::Value::Null, flowpeek::run::latency_json),
        })
    }
}

/// One ring's packets, bytes and latency histogram.
type RingResult = (u64, u64, Option<Histogram<u64>>);

/// Consumes region `name` until its producer closes it and every ring is drained; with
/// `latency_sample` > 0, every Nth frame's stamp is compared with the clock.
pub fn consume(name: &str, latency_sample: u64) -> Result<NullReport, String> {
    let consumer = ShmRegion::open(name).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let rings = consumer.into_rings();
    let n = rings.len();
    let results: Vec<Result<RingResult, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rings
            .into_iter()
            .enumerate()
            .map(|(k, mut ring)| {
                scope.spawn(move || {
                    if n > 1 {
                        pin_to_cpu(k);
                    }
                    ring.attach();
                    let (mut packets, mut bytes) = (0u64, 0u64);
                    let mut hist = (latency_sample > 0).then(latency_histogram);
                    let mut countdown = latency_sample;
                    let mut idle = 0u32;
                    loop {
                        let got = if latency_sample == 0 {
                            ring.rx_batch(|f| {
                                packets += 1;
                                bytes += f.len() as u64;
                            })
                        } else {
                            ring.rx_batch_stamped(|f, stamp| {
                                packets += 1;
                                bytes += f.len() as u64;
                                countdown -= 1;
                                if countdown == 0 {
                                    countdown = latency_sample;
                                    if let (Some(h), true) = (hist.as_mut(), stamp != 0) {
                                        h.saturating_record(monotonic_ns().saturating_sub(stamp));
                                    }
                                }
                            })
                        };
                        match got {
                            Ok(0) => {
                                // Busy-poll: a sleeping consumer measures how fast the
                                // machine wakes it (milliseconds on a loaded VM), not the
                                // ring. Sleep only after about a second of nothing.
                                idle += 1;
                                if idle > 1_000_000 {
                                    std::thread::sleep(Duration::from_micros(50));
                                } else {
                                    std::hint::spin_loop();
                                }
                            }
                            Ok(_) => idle = 0,
                            Err(ShmError::ProducerExited { .. }) => break,
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    Ok((packets, bytes, hist))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a null thread panicked".into()))
            })
            .collect()
    });
    let mut per_ring = Vec::with_capacity(n);
    let mut latency: Option<Histogram<u64>> = None;
    for r in results {
        let (p, b, h) = r?;
        per_ring.push((p, b));
        if let Some(h) = h {
            match latency.as_mut() {
                Some(total) => {
                    let _ = total.add(&h);
                }
                None => latency = Some(h),
            }
        }
    }
    Ok(NullReport {
        per_ring,
        seconds: started.elapsed().as_secs_f64(),
        latency,
    })
}
