//! Null-consumer ceiling of the `shm` rings: one producer thread pushes 64-byte frames into a
//! one-ring region as fast as it can, one consumer thread walks the ring with the netmap ring
//! walker and only releases the slots. Prints packets/s. `FLOWPEEK_BENCH_SECS` sets the run
//! length (default 3).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowpeek::io::shm::{PushError, ShmRegion};

fn main() {
    let secs: f64 = std::env::var("FLOWPEEK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let name = format!("flowpeek-bench-{}", std::process::id());
    let mut producer = ShmRegion::create(&name, 1, 1024, 2048).expect("create shm region");
    let mut consumer = ShmRegion::open(&name).expect("open shm region");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let frame = [0x5au8; 64];
    let prod = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            for _ in 0..256 {
                match producer.push(0, &frame) {
                    Ok(()) => sent += 1,
                    Err(PushError::Full { .. }) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        (sent, producer.full_count(0))
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut got = 0u64;
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1024 {
            got += consumer
                .rx_batch(0, |f| bytes += f.len() as u64)
                .expect("rx_batch") as u64;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (sent, full) = prod.join().expect("producer thread");
    let pps = got as f64 / elapsed;
    println!(
        "shm null consumer, 64-byte frames, 1 ring x 1024 slots: {:.2} Mpps ({:.2} Gbit/s of frame bytes), {got} received / {sent} sent in {elapsed:.2} s, ring full {full} times",
        pps / 1e6,
        bytes as f64 * 8.0 / elapsed / 1e9,
    );
}
