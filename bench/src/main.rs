//! `flowpeek-bench`: generate TCP traffic into flowpeek's shared-memory rings, a netmap port or
//! a pcap file.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use flowpeek_bench::gen::{imix, GenConfig, Generator};
use flowpeek_bench::out::{Output, OutputSpec};

/// Traffic generator and benchmarks for flowpeek, in the style of netmap's pkt-gen.
#[derive(Parser)]
#[command(name = "flowpeek-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate TCP connections (handshake, data both ways, FIN close) into shm rings, the TX
    /// rings of a netmap port, or a pcap file. Frames are prebuilt; only changing fields are
    /// rewritten per packet.
    ///
    /// Example: flowpeek-bench gen --out shm:fp --rings 2 --flows 10000 --size 64 --duration 5
    ///          flowpeek-bench gen --out netmap:eth1 --flows 100000 --size 64 --duration 30
    #[command(verbatim_doc_comment)]
    Gen(GenArgs),
    /// A null consumer of shm rings: releases every slot and counts it (one thread per ring),
    /// the ceiling of the ring (and of the generator) on this machine.
    ///
    /// Example: flowpeek-bench null --source shm:fp --json
    #[command(verbatim_doc_comment)]
    Null {
        /// shm:NAME, created by `flowpeek-bench gen`.
        #[arg(long)]
        source: OutputSpec,
        /// Every Nth packet, record the stamp-to-release latency (0: off).
        #[arg(long, default_value_t = 0)]
        latency_sample: u64,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the generator and a consumer (`flowpeek run`, or the null consumer) as separate,
    /// pinned processes and report packets/s, bits/s, drops by cause, cycles per packet,
    /// latency, memory per flow and the ratio to the null consumer.
    ///
    /// Example: flowpeek-bench run --size 64 --flows 10000 --cores 1 --duration 5
    #[command(verbatim_doc_comment)]
    Run(flowpeek_bench::harness::RunArgs),
    /// A grid of runs (frame sizes × flows × cores × plugins) → CSV, JSON and an SVG plot.
    ///
    /// Example: flowpeek-bench sweep --out-dir target/sweep --tiny
    #[command(verbatim_doc_comment)]
    Sweep(flowpeek_bench::sweep::SweepArgs),
    /// Make a disorderly capture out of a clean one, as a SPAN port or a tap aggregator
    /// does: shuffle inside windows, duplicate data, let ACKs or FINs overtake the data,
    /// replay pieces of closed connections. Packet bytes are kept; timestamps stay sorted.
    ///
    /// Example: flowpeek-bench mangle clean.pcap --out reordered.pcap --window 8 --dup 0.04
    ///          flowpeek-bench mangle clean.pcap --out ackfirst.pcap --ack-first --fin-first
    #[command(verbatim_doc_comment)]
    Mangle(MangleArgs),
    /// Cut the TCP packets of a clean capture into 2..=N IP fragments (IPv4 or IPv6), in a
    /// random order per packet, with repeated fragments and overlaps whose bytes agree:
    /// reassembled, it gives the clean capture's streams.
    ///
    /// Example: flowpeek-bench fragment clean.pcap --out frags.pcap --max 4 --dup 0.1
    #[command(verbatim_doc_comment)]
    Fragment(FragmentArgs),
}

/// `flowpeek-bench fragment`.
#[derive(Args)]
struct FragmentArgs {
    /// The clean capture (pcap or pcapng, one link type).
    input: PathBuf,
    /// Where to write the fragmented capture (pcap, nanosecond timestamps).
    #[arg(long)]
    out: PathBuf,
    /// Most fragments per packet (2..).
    #[arg(long = "max", default_value_t = 4)]
    max_fragments: usize,
    /// Keep each packet's fragments in order (default: shuffled).
    #[arg(long)]
    in_order: bool,
    /// Send each fragment twice with this probability (0..=1).
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Add an overlapping fragment (same bytes) to a packet with this probability (0..=1).
    #[arg(long, default_value_t = 0.0)]
    overlap: f64,
    /// Seed of the random choices (same seed, same output).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `flowpeek-bench mangle`.
#[derive(Args)]
struct MangleArgs {
    /// The clean capture (pcap or pcapng, one link type).
    input: PathBuf,
    /// Where to write the mangled capture (pcap, nanosecond timestamps).
    #[arg(long)]
    out: PathBuf,
    /// Shuffle the packets inside runs of 2..=N consecutive packets (both directions
    /// mixed); 0 leaves the order alone.
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Duplicate each data segment with this probability (0..=1).
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Move every data segment behind the first ACK that covers it.
    #[arg(long)]
    ack_first: bool,
    /// Move every FIN ahead of up to three data segments of its direction.
    #[arg(long)]
    fin_first: bool,
    /// After each connection closed, replay copies of some of its data, FINs and last ACK.
    #[arg(long)]
    late: bool,
    /// Seed of the random choices (same seed, same output).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `flowpeek-bench gen`.
#[derive(Args)]
struct GenArgs {
    /// Where frames go: shm:NAME (netmap-layout rings in /dev/shm, created here),
    /// pcap:FILE, or the TX rings of a real netmap port, as pkt-gen -f tx fills them:
    /// netmap:IF (every hardware TX ring of IF, frames spread over them by the symmetric
    /// flow hash), netmap:IF-K (TX ring K only), netmap:NAME{K / netmap:NAME}K (the master /
    /// slave end of netmap pipe K) or valeB:P (port P of VALE switch B).
    ///
    /// netmap needs the kernel module (scripts/netmap-setup.sh): without /dev/netmap this
    /// fails at once. Its TX rings are synced (NIOCTXSYNC) every --batch frames and when a
    /// ring is full, and at the end until the port has sent everything (2 s at most). netmap
    /// slots are never stamped (a NIC does not carry the slot's ptr field to the receiver);
    /// --rings, --slots and --wait-consumer do not apply (the port has the rings its driver
    /// gives it).
    #[arg(long)]
    out: OutputSpec,
    /// Rings of the shm region (one per flowpeek worker); shm only.
    #[arg(long, default_value_t = 1)]
    rings: u32,
    /// Slots per ring; shm only.
    #[arg(long, default_value_t = 4096)]
    slots: u32,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1000)]
    flows: u32,
    /// Frame size in bytes (54..=1514).
    #[arg(long, default_value_t = 64, conflicts_with = "imix")]
    size: usize,
    /// The IMIX size mix (64 ×7, 576 ×4, 1500 ×1) instead of one size.
    #[arg(long)]
    imix: bool,
    /// Data segments per connection before it closes (0: endless, mid-stream).
    #[arg(long, default_value_t = 16)]
    conn_packets: u32,
    /// Seed: the same seed gives the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a data segment is lost and retransmitted later.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that a data segment is delayed behind the next.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Probability that a data segment is duplicated.
    #[arg(long, default_value_t = 0.0)]
    retransmit: f64,
    /// Fill in TCP checksums.
    #[arg(long)]
    checksums: bool,
    /// Packets per second (0: flat out).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stop after this many packets.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Write one JSON line per completed connection with the SHA-256 of each direction,
    /// to check what a receiver reassembled.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Do not stamp shm slots with the push time (CLOCK_MONOTONIC ns in the slot's `ptr`
    /// field, read by `flowpeek run --latency-sample`); saves a clock read per packet.
    /// pcap and netmap outputs are never stamped.
    #[arg(long)]
    no_stamp: bool,
    /// Print a JSON summary on stdout at the end (sent, bytes, seconds, per-ring full counts).
    #[arg(long)]
    json: bool,
    /// shm: send nothing until a consumer polls every ring (at most this many seconds,
    /// then give up with an error), so that its start-up does not count as ring-full
    /// frames. 0: start at once.
    #[arg(long, default_value_t = 0.0)]
    wait_consumer: f64,
    /// shm: frames per ring handed to the consumer at once (the ring's tail is published
    /// every N frames, and before each --rate wait), like pkt-gen's -b burst. netmap: frames
    /// written between two NIOCTXSYNC calls (and a sync before each --rate wait), pkt-gen's -b.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Gen(a) => gen_main(a),
        Command::Null {
            source,
            latency_sample,
            json,
        } => {
            let OutputSpec::Shm(name) = source else {
                eprintln!("flowpeek-bench: null needs --source shm:NAME");
                return ExitCode::from(2);
            };
            match flowpeek_bench::null::consume(&name, latency_sample) {
                Ok(r) => {
                    if json {
                        println!("{}", r.to_json());
                    } else {
                        eprintln!("flowpeek-bench: null consumer: {}", r.to_json());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flowpeek-bench: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(a) => flowpeek_bench::harness::run_main(a),
        Command::Sweep(a) => flowpeek_bench::sweep::sweep_main(a),
        Command::Mangle(a) => mangle_main(a),
        Command::Fragment(a) => fragment_main(a),
    }
}

fn fragment_main(a: FragmentArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&a.dup) || !(0.0..=1.0).contains(&a.overlap) || a.max_fragments < 2 {
        eprintln!(
            "flowpeek-bench fragment: --dup and --overlap are probabilities (0..=1) and --max at least 2"
        );
        return ExitCode::from(2);
    }
    let cfg = flowpeek_bench::fragment::FragmentConfig {
        max_fragments: a.max_fragments,
        shuffle: !a.in_order,
        dup: a.dup,
        overlap: a.overlap,
        seed: a.seed,
    };
    match flowpeek_bench::fragment::fragment_file(&a.input, &a.out, &cfg) {
        Ok(r) => {
            eprintln!(
                "fragment: {} packets in, {} fragmented, {} frames out ({} duplicates, {} overlaps) -> {}",
                r.packets_in,
                r.fragmented,
                r.frames_out,
                r.duplicates,
                r.overlaps,
                a.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowpeek-bench fragment: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mangle_main(a: MangleArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&a.dup) {
        eprintln!(
            "flowpeek-bench mangle: --dup {} is not a probability (0..=1)",
            a.dup
        );
        return ExitCode::from(2);
    }
    let cfg = flowpeek_bench::mangle::MangleConfig {
        window: a.window,
        dup: a.dup,
        ack_first: a.ack_first,
        fin_first: a.fin_first,
        late: a.late,
        seed: a.seed,
    };
    match flowpeek_bench::mangle::mangle_file(&a.input, &a.out, &cfg) {
        Ok(r) => {
            eprintln!(
                "mangle: {} packets in, {} out ({} moved, {} copies added, largest time shift \
                 {:.3} s) -> {}",
                r.packets_in,
                r.packets_out,
                r.moved,
                r.copies,
                r.largest_shift() as f64 / 1e9,
                a.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowpeek-bench mangle: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_main(a: GenArgs) -> ExitCode {
    let GenArgs {
        out,
        rings,
        slots,
        flows,
        size,
        imix: use_imix,
        conn_packets,
        seed,
        loss,
        reorder,
        retransmit,
        checksums,
        rate,
        count,
        duration,
        manifest,
        quiet,
        no_stamp,
        json,
        wait_consumer,
        batch,
    } = a;
    if count.is_none() && duration.is_none() && matches!(out, OutputSpec::Pcap(_)) {
        eprintln!("flowpeek-bench: a pcap output needs --count or --duration");
        return ExitCode::from(2);
    }
    let cfg = GenConfig {
        flows,
        sizes: if use_imix { imix() } else { vec![size] },
        conn_packets,
        seed,
        loss,
        reorder,
        retransmit,
        checksums,
    };
    let mut gen = Generator::new(cfg);
    gen.record = manifest.is_some();
    let mut output = match Output::open(&out, rings, slots) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("flowpeek-bench: {e}");
            return ExitCode::from(2);
        }
    };
    output.set_stamp(!no_stamp);
    if wait_consumer > 0.0 && !output.wait_for_consumer(Duration::from_secs_f64(wait_consumer)) {
        eprintln!(
            "flowpeek-bench: no consumer polled every ring of {} within {wait_consumer} s (--wait-consumer): start flowpeek run --source shm:… (or flowpeek-bench null) on it",
            output.name()
        );
        return ExitCode::from(1);
    }
    // Per ring: frames that found their ring full at least once (a NIC would have dropped
    // them; here the same frame waits and goes again, so streams stay verifiable).
    let mut full_frames = vec![0u64; output.rings()];
    let started = Instant::now();
    let deadline = duration.map(Duration::from_secs_f64);
    let limit = count.unwrap_or(u64::MAX);
    let mut frame = vec![0u8; 2048];
    let (mut sent, mut refused, mut bytes) = (0u64, 0u64, 0u64);
    let mut last = Instant::now();
    let mut pending: Option<usize> = None;
    let base_ts = 1_700_000_000_000_000_000u64;
    let gap_ns = 1_000_000_000u64.checked_div(rate).unwrap_or(1_000);
    // With --rate, the schedule is checked every `pace_every` packets: about 2 us of traffic
    // (10 packets at 5 Mpps), so frames leave in small bursts like a NIC's, not in blocks
    // of a thousand that would queue in the ring and show up as latency.
    let pace_every = if rate > 0 {
        (rate / 500_000).clamp(1, 1024)
    } else {
        u64::MAX
    };
    // Frames go to the consumer in batches of up to --batch per ring, as a driver's txsync
    // would hand them over; with --rate, each paced burst is flushed before the wait.
    output.set_publish_every(batch);
    while sent < limit {
        if rate > 0 && sent % pace_every == 0 && pending.is_none() {
            if let Err(e) = output.flush() {
                eprintln!("flowpeek-bench: {e}");
                return ExitCode::from(1);
            }
            pace(started, sent, rate);
        }
        // Clock reads every 1024 packets, not per packet (and every 65536 refusals while a
        // full ring blocks: a consumer that died must not keep the generator past its
        // deadline).
        if sent % 1024 == 0 || (pending.is_some() && refused % 65536 == 0) {
            if deadline.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            if !quiet && last.elapsed() >= Duration::from_secs(1) {
                let s = started.elapsed().as_secs_f64();
                eprintln!(
                    "flowpeek-bench: {sent} packets ({:.3} Mpps, {:.1} Gbit/s), {refused} refused by full rings",
                    sent as f64 / s / 1e6,
                    bytes as f64 * 8.0 / s / 1e9
                );
                last = Instant::now();
            }
        }
        let retrying = pending.is_some();
        let len = match pending.take() {
            Some(len) => len,
            None => gen.next(&mut frame),
        };
        match output.send_to(&frame[..len], base_ts + sent * gap_ns) {
            Ok(Ok(())) => {
                sent += 1;
                bytes += len as u64;
            }
            Ok(Err(ring)) => {
                if !retrying {
                    full_frames[ring] += 1;
                }
                // The ring is full: the same frame goes again (a loss would corrupt the
                // streams a receiver checks).
                refused += 1;
                pending = Some(len);
                std::hint::spin_loop();
            }
            Err(e) => {
                eprintln!("flowpeek-bench: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if let Err(e) = output.finish() {
        eprintln!("flowpeek-bench: {e}");
        return ExitCode::from(1);
    }
    let s = started.elapsed().as_secs_f64();
    if !quiet {
        eprintln!(
            "flowpeek-bench: sent {sent} packets, {bytes} bytes in {s:.3} s ({:.3} Mpps, {:.2} Gbit/s); {refused} refused by full rings; output {}",
            sent as f64 / s / 1e6,
            bytes as f64 * 8.0 / s / 1e9,
            output.name()
        );
    }
    if json {
        let v = serde_json::json!({
            "sent": sent, "bytes": bytes, "seconds": s, "refused": refused,
            "ring_full_events": output.full_per_ring(), "ring_full_frames": full_frames,
            "stamped": output.stamps(),
        });
        println!("{v}");
    }
    if let Some(path) = manifest {
        let write = || -> std::io::Result<()> {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
            for c in &gen.finished {
                let line = serde_json::json!({
                    "client": c.client.to_string(), "server": c.server.to_string(),
                    "c2s": {"bytes": c.c2s, "sha256": gen.expected(c.seed, true, c.c2s)},
                    "s2c": {"bytes": c.s2c, "sha256": gen.expected(c.seed, false, c.s2c)},
                });
                writeln!(w, "{line}")?;
            }
            w.flush()
        };
        if let Err(e) = write() {
            eprintln!("flowpeek-bench: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// Waits until packet `sent` is due at `rate` packets/s from `started`: sleeps for long
/// waits and spins the last 100 us (a sleep overshoots by tens of microseconds).
fn pace(started: Instant, sent: u64, rate: u64) {
    let due = Duration::from_nanos((u128::from(sent) * 1_000_000_000 / u128::from(rate)) as u64);
    loop {
        let Some(wait) = due.checked_sub(started.elapsed()) else {
            return;
        };
        if wait > Duration::from_micros(200) {
            std::thread::sleep(wait - Duration::from_micros(100));
        } else {
            std::hint::spin_loop();
        }
    }
}
