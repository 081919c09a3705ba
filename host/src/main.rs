//! The `flowpeek` command.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use flowpeek::filter::StreamFilter;
use flowpeek::flow::{Config, OverlapPolicy};
use flowpeek::io::stream::InputSpec;
use flowpeek::streams::{self, StreamsOptions};

/// Watch TCP traffic: both-sided tracking and reassembly with the semantics of mOS.
#[derive(Parser)]
#[command(name = "flowpeek", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reassemble every TCP connection of a capture and report each direction's bytes.
    ///
    /// For each connection, in order of its first packet: its flow id (uid, --json), the
    /// client and server, start and end time, how it closed (fin, rst, timeout, eof,
    /// evicted) and, per direction, the number of bytes delivered in order, their SHA-256
    /// (and CRC-32), the bytes never seen (missing: gaps skipped) and the bytes received
    /// more than once (overlap). Connections whose SYN is not in the capture are tracked
    /// from mid-stream and marked partial (flags P in the table; R: a buffer was refused).
    /// The record's fields and their order: docs/records.md.
    ///
    /// --write DIR puts each direction's bytes in a file, named as tcpflow names them
    /// (SRCIP.SRCPORT-DSTIP.DSTPORT, zero-padded; c1, c2, ... for a 4-tuple used again).
    ///
    /// Reordered captures (SPAN ports, tap aggregators) give the streams of the capture in
    /// order: see --gap-skip-after. Packets of a connection that already closed are counted
    /// as "late" in the summary, not taken for a new connection; a SYN with a fresh ISN on
    /// the same endpoints is one.
    ///
    /// Inputs: pcap or pcapng files, `-` for standard input, pipes and FIFOs, each
    /// possibly gzip, zstd or xz compressed (recognised by its first bytes). Several are
    /// read one after the other as one capture, as `mergecap -a` would join them. Input is
    /// read sequentially, in bounded memory, whatever its size. Every core reassembles the
    /// connections whose hash falls on it (--cores, as `run`); the records are the same,
    /// in the same order, for any number of cores, unless a per-core limit is reached
    /// (--buffer-memory and --max-flows are per core) or more than 65,536 records wait
    /// for an earlier one (the summary counts those written out of order).
    ///
    /// Examples: flowpeek streams trace.pcap --json > streams.jsonl
    ///           flowpeek streams trace.pcap --write flows/ --gaps zero
    ///           tcpdump -i eth0 -w - | flowpeek streams - --json
    ///           flowpeek streams day1.pcap.zst day2.pcap.gz --cores 2
    #[command(verbatim_doc_comment)]
    Streams {
        /// Captures: pcap or pcapng (Ethernet, 802.1Q/802.1ad, Linux cooked SLL/SLL2, raw
        /// IP), `-` for standard input; .gz/.zst/.xz compressed or not.
        #[arg(required = true, num_args = 1..)]
        capture: Vec<String>,
        /// Worker threads, one per core, each taking its share of the connections
        /// [default: every CPU of this process].
        #[arg(long, value_parser = parse_cores)]
        cores: Option<usize>,
        /// No progress bar (it is shown on stderr when stderr is a terminal and the input
        /// is larger than 64 MiB, or of unknown size).
        #[arg(long)]
        no_progress: bool,
        /// One JSON object per line per connection instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the summary (packets, bytes, connections, malformed, time) to stderr.
        /// Without --json it is always printed after the table.
        #[arg(long)]
        summary: bool,
        #[command(flatten)]
        engine: EngineArgs,
        /// Compute only the CRC-32 of each direction, not SHA-256 (the "sha256" field is
        /// left out): the work other reassemblers do in scripts/compare.
        #[arg(long)]
        no_sha256: bool,
        /// Write each direction's bytes to a file in this directory (created if missing; a
        /// file of the same name is replaced). A direction that carried nothing gets no
        /// file. The JSON record gives each direction's "file" and "gaps". Runs on one core
        /// (one writer names every file).
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
        /// With --write: the file name template. tcpflow's fields: %A/%a sender address
        /// (IPv4 zero-padded)/port (5 digits), %B/%b receiver, %C/%c "c"/count when the name
        /// was used before in this run, %# that count always; and %u uid, %d c2s or s2c, %n
        /// connection number, %% a '%'. '/' makes subdirectories.
        #[arg(long, value_name = "TEMPLATE", requires = "write",
              default_value = flowpeek::stream_files::DEFAULT_TEMPLATE)]
        name: flowpeek::stream_files::NameTemplate,
        /// With --write: what a gap (bytes never captured) becomes in the file: skip (left
        /// out: the file holds the delivered bytes) or zero (zeros in their place, as
        /// tcpflow: the file offset is the stream offset; a sparse hole on disk).
        #[arg(long, value_enum, requires = "write", default_value = "skip")]
        gaps: Gaps,
    },
    /// Print one connection's bytes, both directions interleaved in stream order.
    ///
    /// As `tshark -z follow,tcp`: each chunk is what one packet made readable, in the
    /// order the packets came; client-to-server chunks at the margin, server-to-client
    /// chunks indented by a tab. Reassembly is flowpeek's (first copy of an overlap wins;
    /// a gap is skipped and shown as "[N bytes missing]", except in --raw). The
    /// connection is chosen by --conn: its number (0 for the first, in the order
    /// `streams` lists them), its uid, or CLIENT-SERVER (either way round; the first such
    /// connection).
    ///
    /// Example: flowpeek follow trace.pcap --conn 10.0.0.1:5555-10.0.0.2:80 --hex
    #[command(verbatim_doc_comment)]
    Follow {
        /// A pcap or pcapng file.
        capture: PathBuf,
        /// N (connection number), UID (16 hex digits) or CLIENT-SERVER
        /// (10.0.0.1:5555-10.0.0.2:80, [::1]:5555-[::1]:80).
        #[arg(long, value_name = "N|UID|CLIENT-SERVER")]
        conn: flowpeek::follow::ConnSelector,
        /// Each chunk's length, then its bytes as text, non-printable bytes as '.' (the
        /// default).
        #[arg(long, group = "layout")]
        ascii: bool,
        /// A hex dump: offset within the direction, 16 bytes, their text.
        #[arg(long, group = "layout")]
        hex: bool,
        /// Each chunk as one line of hex digits, nothing else (no gap notes): for scripts.
        #[arg(long, group = "layout")]
        raw: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run monitor plugins over a packet source, with hot reload.
    ///
    /// Every `*.so` in --plugins is loaded (with `<name>.toml` next to it as its config);
    /// each plugin's records go to <log-dir>/<plugin>.jsonl. While the source runs, a
    /// library copied or renamed into the directory loads as a new generation: flows that
    /// are open stay with the generation that saw their first event, new flows get the
    /// newest; old generations retire when their flows end or after --drain-timeout.
    /// A file that fails to load leaves the running generation as it was.
    ///
    /// Example: flowpeek run --source pcap:trace.pcap --plugins ./plugins --stats stats.json
    #[command(verbatim_doc_comment)]
    Run {
        /// Where packets come from: pcap:FILE (a capture, sharded by flow hash over the
        /// cores), shm:NAME (netmap-layout rings in /dev/shm, one per core, e.g. from
        /// flowpeek-bench gen), afpacket:IF (live, one socket per core in a symmetric fanout
        /// group), netmap:IF or netmap:IF-K (needs the netmap module: scripts/netmap-setup.sh).
        #[arg(long)]
        source: flowpeek::run::Source,
        /// The plugin directory.
        #[arg(long)]
        plugins: PathBuf,
        /// Where each plugin's records go (<plugin>.jsonl).
        #[arg(long, default_value = "flowpeek-logs")]
        log_dir: PathBuf,
        /// Write a JSON summary here at exit (packets, flows, per-plugin events, records,
        /// failures, generations, retained images).
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Replay at this many packets per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        pace: u64,
        /// Passes over the capture (each shifted in time after the previous), at least 1.
        #[arg(long = "loop", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        loops: u32,
        /// Seconds (of packet time) an old generation keeps its flows after a reload; then
        /// they get ConnEnd with reason "reloaded".
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
        #[command(flatten)]
        engine: EngineArgs,
        /// Do not watch the plugin directory (no hot reload).
        #[arg(long)]
        no_watch: bool,
        /// Worker threads, one per core, each pinned, flows sharded by a symmetric hash
        /// (default: every core of this machine).
        #[arg(long, value_parser = parse_cores)]
        cores: Option<usize>,
        /// No per-second status on stderr.
        #[arg(long)]
        quiet: bool,
        /// shm sources: every Nth packet, measure the time from the producer's stamp
        /// (flowpeek-bench gen) to the return of the last plugin callback; --stats gets
        /// "latency_ns" (p50, p90, p95, p99, p99.9, max). 0: off.
        #[arg(long, default_value_t = 0)]
        latency_sample: u64,
        /// With --latency-sample: the first this many milliseconds of stamps are warm-up
        /// (the flow table and buffers growing to the working set) and not recorded.
        #[arg(long, default_value_t = 1000)]
        latency_warmup_ms: u64,
        /// Time budget of one plugin callback, in milliseconds (0: none). A watchdog thread
        /// reports a callback running longer (naming the plugin and core) and counts it as
        /// an overrun ("overruns" in --stats); a callback cannot be interrupted, so the core
        /// waits for it either way.
        #[arg(long, default_value_t = flowpeek::plugin::budget::DEFAULT_LIMIT_MS)]
        plugin_budget_ms: u64,
        /// What happens to a plugin whose callback ran past --plugin-budget-ms: warn (count
        /// it and go on) or disable (turn that plugin off on that core, as after a panic).
        #[arg(long, default_value = "warn")]
        on_overrun: flowpeek::plugin::OverrunPolicy,
    },
    /// Print one JSON line per monitor callback, in mOS's vocabulary (as shared/mos-events).
    ///
    /// A probe monitor subscribes to every event at every hook and reads all in-order data
    /// on each CONN_NEW_DATA, like the probe that recorded mOS's reference traces. Use it to
    /// see what a plugin would be told, packet by packet. Each line opens with the flow's
    /// uid, client and server (mOS's traces have "flow":"CLIENT>SERVER" instead), as every
    /// record does: docs/records.md.
    ///
    /// Inputs as for `streams` (files, `-`, pipes, compressed, several in a row). Lines
    /// come in callback order on one core; with --cores N (any N, 1 included) they come
    /// flow by flow instead, in order of the flows' first packets, each flow's lines in
    /// callback order, and are the same for any N.
    Events {
        /// Captures: pcap or pcapng, `-` for standard input; .gz/.zst/.xz or not.
        #[arg(required = true, num_args = 1..)]
        capture: Vec<String>,
        /// Worker threads, flows sharded by hash; the lines then come in flow order.
        #[arg(long, value_parser = parse_cores)]
        cores: Option<usize>,
        #[command(flatten)]
        engine: EngineArgs,
        /// Packets per batch (`NewData` is coalesced per batch); 1 is closest to mOS's pcap
        /// backend.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
        batch: u32,
    },
}

/// The engine options every command takes (`streams`, `run`, `events`). Each command has
/// its own defaults ([`Defaults`]); `--profile` replaces them with a preset, and an option
/// given explicitly overrides both.
#[derive(Args)]
#[command(next_help_heading = "Engine options (the same on every command)")]
struct EngineArgs {
    /// A policy preset. `mos`: mOS 0.3's policies, as its reference traces were recorded
    /// (shared/mos-events): no mid-stream pick-up, packets with a bad TCP or IPv4
    /// checksum and packets cut by snaplen dropped without an event, 8 KiB buffers, 30 s
    /// idle timeout, TIME_WAIT 0. Options given explicitly override the profile (e.g.
    /// `--profile mos --midstream`).
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// Do not track connections whose SYN was not captured: their packets are orphans
    /// (mOS's behaviour).
    #[arg(long, conflicts_with = "midstream")]
    no_midstream: bool,
    /// Track connections whose SYN was not captured, marked partial (the default without
    /// a profile).
    #[arg(long)]
    midstream: bool,
    /// Ignore packets whose TCP checksum or IPv4 header checksum is wrong. Off by default:
    /// captures often hold checksums left for the NIC to fill in.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    verify_checksums: Option<bool>,
    /// Ignore packets cut by the capture's snapshot length (IP declares more bytes than
    /// were captured), as mOS does. Off by default: the captured bytes are used and the
    /// rest counted missing.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    drop_truncated: Option<bool>,
    /// Which copy wins when segments overlap [default: first].
    #[arg(long, value_enum)]
    overlap: Option<Overlap>,
    /// Receive buffer per side, in bytes. `streams` [default: 262144]: bytes are read as
    /// they arrive, so this bounds out-of-order data held while waiting for a gap, not the
    /// stream length; memory is about 2 × this × the connections open at once (256 KiB
    /// gives the same results as 1 MiB on the whole test corpus). `run`, `events`
    /// [default: 8192]: when a plugin asks for the default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1 << 30))]
    buffer: Option<u32>,
    /// Flow-table capacity (per core); beyond it the least recently active flow is
    /// evicted [default: 1000000; events: 100000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_flows: Option<u32>,
    /// Receive-buffer memory per core, in MiB: a side that would exceed it gets no buffer
    /// (counted as buffer_memory_refusals in --stats) [default: run 4096, streams 8192,
    /// events 1024].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    buffer_memory: Option<u64>,
    /// Idle timeout in seconds of packet time [default: 30; streams: 3600, so that a quiet
    /// control connection is reported as one connection].
    #[arg(long)]
    timeout: Option<u64>,
    /// Reordering allowance, in packets of the connection (either direction). A gap the
    /// receiver acknowledged is declared missing only after this many more packets that
    /// find the stream where it was (or when the buffer needs the room, or at the
    /// connection's end), so that a segment the ACK overtook still fills it. A stream whose
    /// SYN was not seen first keeps its start open to an overtaken SYN or segment for as
    /// many packets (its first bytes are delivered then). A FIN beyond the data takes effect when the stream
    /// reaches it or when the receiver acknowledges the FIN (the connection then still
    /// waits, for the allowance, for the bytes before it); an in-window RST beyond the
    /// data when the stream reaches it or after the allowance. An in-sequence RST from a
    /// side that has not received its peer's FIN lingers for the allowance or --rst-linger
    /// of packet time, whichever comes first, so that the peer's bytes still in flight reach
    /// the stream. A closed connection's late
    /// packets are counted as "late", not taken for a new connection (--profile mos: they
    /// are orphans, as in mOS). 0: mOS's rule, skip and apply at once [default: 64;
    /// --profile mos: 0].
    #[arg(long, value_name = "PACKETS")]
    gap_skip_after: Option<u32>,
    /// How long, in milliseconds of packet time, an in-sequence RST waits at most for the
    /// peer's bytes still in flight (see --gap-skip-after): a tap shows them within about a
    /// round trip. Raise it for captures whose timestamps were merged coarsely
    /// [default: 1000].
    #[arg(long, value_name = "MS")]
    rst_linger: Option<u64>,
    /// Seconds a closed connection stays in TIME_WAIT before it is destroyed [default: 0,
    /// as mOS].
    #[arg(long)]
    time_wait: Option<u64>,
    /// Memory for IP fragments waiting for their datagram, per core, in KiB: past it the
    /// oldest datagram is evicted (counted) [default: 8192].
    #[arg(long, value_name = "KIB")]
    defrag_memory: Option<u64>,
    /// Which bytes of overlapping IP fragments a datagram keeps, as that target's stack
    /// does (Novak's target-based policies; SPEC, Defragmentation) [default: first].
    #[arg(long, value_enum)]
    defrag_policy: Option<DefragPolicy>,
    /// Most fragments one IP datagram may have; a datagram with more is dropped
    /// [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65535))]
    defrag_max_fragments: Option<u32>,
    /// Most IP datagrams being reassembled at once, per core; past it the oldest is evicted
    /// [default: 4096].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    defrag_max_datagrams: Option<u32>,
    /// Track only connections whose first packet (the SYN, or the first one seen of a
    /// mid-stream connection) matches this tcpdump expression, compiled and matched by
    /// libpcap; the others get no buffer and no event, before any monitor. Example:
    /// -f 'tcp port 80'.
    #[arg(long, short = 'f', value_name = "EXPR", value_parser = parse_filter)]
    filter: Option<StreamFilter>,
}

fn parse_filter(expr: &str) -> Result<StreamFilter, String> {
    StreamFilter::new(expr).map_err(|e| e.to_string())
}

/// `--defrag-policy`: the names of [`flowpeek::ip::Policy`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum DefragPolicy {
    /// The bytes received first win (Mac OS, HP-UX 11).
    First,
    /// The bytes received last win (Cisco IOS).
    Last,
    /// A later fragment wins where it starts before the earlier one (BSD, AIX, HP-UX 10).
    Bsd,
    /// As bsd, and also where both start at the same offset (Linux before 4.19).
    Linux,
    /// A later fragment wins where it starts before and ends after the earlier one (Windows).
    Windows,
    /// A later fragment wins where it starts before and ends at or after the earlier one.
    Solaris,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Profile {
    /// mOS 0.3's policies.
    Mos,
}

/// One command's engine defaults, before `--profile` and explicit options.
#[derive(Clone, Copy)]
struct Defaults {
    buffer: u32,
    max_flows: u32,
    buffer_memory_mib: u64,
    timeout_s: u64,
}

impl Defaults {
    const STREAMS: Defaults = Defaults {
        buffer: 1 << 18,
        max_flows: 1_000_000,
        buffer_memory_mib: 8 << 10,
        timeout_s: 3600,
    };
    const RUN: Defaults = Defaults {
        buffer: 8192,
        max_flows: 1_000_000,
        buffer_memory_mib: 4096,
        timeout_s: 30,
    };
    const EVENTS: Defaults = Defaults {
        buffer: 8192,
        max_flows: 100_000,
        buffer_memory_mib: 1024,
        timeout_s: 30,
    };
}

const NANOS: u64 = 1_000_000_000;

impl EngineArgs {
    /// The engine configuration: the command's defaults `d`, then the profile, then the
    /// options given explicitly.
    fn config(&self, d: Defaults) -> Config {
        let mut cfg = match self.profile {
            Some(Profile::Mos) => Config::mos(),
            None => Config {
                buffer_capacity: d.buffer,
                tcp_timeout: d.timeout_s.saturating_mul(NANOS),
                ..Config::default()
            },
        };
        cfg.max_flows = self.max_flows.unwrap_or(d.max_flows);
        cfg.buffer_memory = self
            .buffer_memory
            .unwrap_or(d.buffer_memory_mib)
            .saturating_mul(1 << 20);
        if let Some(b) = self.buffer {
            cfg.buffer_capacity = b;
        }
        if let Some(k) = self.gap_skip_after {
            cfg.gap_skip_after = k;
        }
        if let Some(ms) = self.rst_linger {
            cfg.rst_linger = ms.saturating_mul(NANOS / 1000);
        }
        if let Some(t) = self.timeout {
            cfg.tcp_timeout = t.saturating_mul(NANOS);
        }
        if let Some(t) = self.time_wait {
            cfg.tw_interval = t.saturating_mul(NANOS);
        }
        if let Some(o) = self.overlap {
            cfg.overlap = match o {
                Overlap::First => OverlapPolicy::First,
                Overlap::Last => OverlapPolicy::Last,
            };
        }
        if let Some(v) = self.verify_checksums {
            cfg.verify_checksums = v;
        }
        if let Some(v) = self.drop_truncated {
            cfg.drop_truncated = v;
        }
        cfg.filter = self.filter.clone();
        if self.no_midstream {
            cfg.midstream = false;
        } else if self.midstream {
            cfg.midstream = true;
        }
        if let Some(k) = self.defrag_memory {
            cfg.defrag.memory = usize::try_from(k.saturating_mul(1024)).unwrap_or(usize::MAX);
        }
        if let Some(p) = self.defrag_policy {
            cfg.defrag.policy = match p {
                DefragPolicy::First => flowpeek::ip::Policy::First,
                DefragPolicy::Last => flowpeek::ip::Policy::Last,
                DefragPolicy::Bsd => flowpeek::ip::Policy::Bsd,
                DefragPolicy::Linux => flowpeek::ip::Policy::Linux,
                DefragPolicy::Windows => flowpeek::ip::Policy::Windows,
                DefragPolicy::Solaris => flowpeek::ip::Policy::Solaris,
            };
        }
        if let Some(n) = self.defrag_max_fragments {
            cfg.defrag.max_fragments = n as usize;
        }
        if let Some(n) = self.defrag_max_datagrams {
            cfg.defrag.max_datagrams = n as usize;
        }
        cfg
    }
}

/// `--gaps`.
#[derive(Clone, Copy, ValueEnum)]
enum Gaps {
    /// Leave the missing bytes out.
    Skip,
    /// Zeros in their place (tcpflow).
    Zero,
}

#[derive(Clone, Copy, ValueEnum)]
enum Overlap {
    /// Keep the bytes seen first (what most receivers' stacks do).
    First,
    /// Keep the newest copy.
    Last,
}

fn main() -> ExitCode {
    // A plugin test-load child (`flowpeek __probe-plugin`), else enable test loads by this binary.
    if let Some(code) = flowpeek::plugin::probe::main_hook() {
        return code;
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            source,
            plugins,
            log_dir,
            stats,
            pace,
            loops,
            drain_timeout,
            engine,
            no_watch,
            cores,
            quiet,
            latency_sample,
            latency_warmup_ms,
            plugin_budget_ms,
            on_overrun,
        } => run(RunArgs {
            source,
            plugins,
            log_dir,
            stats,
            pace,
            loops,
            drain_timeout,
            engine: engine.config(Defaults::RUN),
            no_watch,
            cores,
            quiet,
            latency_sample,
            latency_warmup: latency_warmup_ms.saturating_mul(1_000_000),
            budget: flowpeek::plugin::CallBudget {
                limit: std::time::Duration::from_millis(plugin_budget_ms),
                policy: on_overrun,
            },
        }),
        Command::Events {
            capture,
            cores,
            engine,
            batch,
        } => {
            let inputs: Vec<InputSpec> = capture.iter().map(|s| InputSpec::parse(s)).collect();
            events(
                &inputs,
                cores,
                engine.config(Defaults::EVENTS),
                batch as usize,
            )
        }
        Command::Streams {
            capture,
            cores,
            no_progress,
            json,
            summary,
            engine,
            no_sha256,
            write,
            name,
            gaps,
        } => {
            let engine = engine.config(Defaults::STREAMS);
            if let Some(dir) = &write {
                // Found now, not at the first connection's bytes.
                if let Err(e) = flowpeek::stream_files::prepare_dir(dir) {
                    note(&format!(
                        "flowpeek: cannot write files in {}: {e}; give --write a directory you may create files in",
                        dir.display()
                    ));
                    return ExitCode::from(2);
                }
            }
            let opts = StreamsOptions {
                sha256: !no_sha256,
                buffer: engine.buffer_capacity,
                engine,
                write: write.map(|dir| flowpeek::stream_files::WriteOptions {
                    dir,
                    name,
                    gaps: match gaps {
                        Gaps::Skip => flowpeek::stream_files::GapFill::Skip,
                        Gaps::Zero => flowpeek::stream_files::GapFill::Zero,
                    },
                }),
            };
            let inputs: Vec<InputSpec> = capture.iter().map(|s| InputSpec::parse(s)).collect();
            let cores = cores.unwrap_or_else(cpus);
            streams_command(&inputs, cores, !no_progress, &opts, json, summary)
        }
        Command::Follow {
            capture,
            conn,
            ascii: _,
            hex,
            raw,
            engine,
        } => {
            let format = if hex {
                flowpeek::follow::Format::Hex
            } else if raw {
                flowpeek::follow::Format::Raw
            } else {
                flowpeek::follow::Format::Ascii
            };
            follow(&capture, engine.config(Defaults::STREAMS), conn, format)
        }
    }
}

/// Exit status of a run stopped by SIGINT or SIGTERM (the shell's 128 + SIGINT): what it
/// wrote is complete up to there, but the capture was not read to its end.
const EXIT_STOPPED: u8 = 130;

/// A flag set by SIGINT, SIGTERM or SIGHUP: `streams` and `events` stop reading, finish
/// the engine (open flows end as at the end of the capture) and flush their output.
fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    if let Err(e) =
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed))
    {
        let _ = writeln!(
            std::io::stderr(),
            "flowpeek: warning: a signal will not stop cleanly: {e}"
        );
    }
    stop
}

/// Writes `msg` to stderr; false when stderr cannot take it (e.g. `2>/dev/full`), which
/// the caller turns into a non-zero exit instead of the panic `eprintln!` would give.
fn note(msg: &str) -> bool {
    writeln!(std::io::stderr(), "{msg}").is_ok()
}

fn events(inputs: &[InputSpec], cores: Option<usize>, cfg: Config, batch: usize) -> ExitCode {
    let stop = stop_flag();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let order = match cores {
        Some(_) => flowpeek::trace::Order::Flow,
        None => flowpeek::trace::Order::Callback,
    };
    let sum = match flowpeek::trace::run_inputs(
        inputs,
        cfg,
        cores.unwrap_or(1),
        batch,
        order,
        &stop,
        |l| writeln!(out, "{l}"),
    ) {
        Ok(s) => s,
        Err(e) => {
            note(&format!("flowpeek: {e}"));
            return ExitCode::from(2);
        }
    };
    let flushed = out.flush();
    let write_error = sum.write_error.or(flushed.err());
    let mut ok = true;
    if let Some(e) = &sum.capture_error {
        ok &= note(&format!(
            "flowpeek: warning: {e}; every packet before it was processed"
        ));
    }
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            note(&format!(
                "flowpeek: writing the events: {e} (after {} lines)",
                sum.lines
            ));
            return ExitCode::from(1);
        }
    }
    if sum.stopped {
        note("flowpeek: stopped by a signal: the events up to there were written");
        return ExitCode::from(EXIT_STOPPED);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Inputs smaller than this get no progress bar.
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

/// The progress bar of `streams` on stderr: bytes read of the total (with the ETA) when
/// the inputs' sizes are known, else bytes read; and packets/s.
fn progress_bar(inputs: &[InputSpec]) -> Option<indicatif::ProgressBar> {
    let sizes: Option<Vec<u64>> = inputs.iter().map(InputSpec::size).collect();
    let total = sizes.map(|s| s.iter().sum::<u64>());
    if total.is_some_and(|t| t < PROGRESS_MIN_BYTES) {
        return None;
    }
    let target = indicatif::ProgressDrawTarget::stderr_with_hz(10);
    let bar = match total {
        Some(t) => indicatif::ProgressBar::with_draw_target(Some(t), target).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}",
            )
            .ok()?,
        ),
        None => indicatif::ProgressBar::with_draw_target(None, target).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes} {binary_bytes_per_sec} {msg} {elapsed}",
            )
            .ok()?,
        ),
    };
    Some(bar)
}

fn streams_command(
    inputs: &[InputSpec],
    cores: usize,
    progress: bool,
    opts: &StreamsOptions,
    json: bool,
    summary: bool,
) -> ExitCode {
    let stop = stop_flag();
    let bar = if progress && std::io::stderr().is_terminal() {
        progress_bar(inputs)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let header = if json {
        Ok(())
    } else {
        writeln!(out, "{}", streams::table_header())
    };
    let result = header.map_err(|e| streams::StreamsError::Write(e, Box::new(empty_summary())));
    let mut files_error = None;
    // One line buffer for every record: no allocation per record once it has grown.
    let mut line = String::with_capacity(512);
    let result = result.and_then(|()| {
        streams::run_inputs(
            inputs,
            opts,
            cores,
            &stop,
            |r| {
                if let Some(e) = &r.file_error {
                    // Its files (and every later one's) are incomplete: stop here.
                    files_error = Some(e.clone());
                    return Err(std::io::Error::other(e.to_string()));
                }
                line.clear();
                if json {
                    r.write_json(&mut line);
                } else {
                    line.push_str(&streams::table_row(r));
                }
                line.push('\n');
                out.write_all(line.as_bytes())
            },
            |p| {
                if let Some(bar) = &bar {
                    let packets = p.packets.load(std::sync::atomic::Ordering::Relaxed);
                    bar.set_position(p.bytes.load(std::sync::atomic::Ordering::Relaxed));
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!(
                        "{packets} packets {:.2} Mpps",
                        packets as f64 / secs / 1e6
                    ));
                }
            },
        )
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (report, write_error) = match result {
        Ok(r) => (r, None),
        Err(streams::StreamsError::Capture(e)) => {
            note(&format!("flowpeek: {e}"));
            return ExitCode::from(2);
        }
        Err(streams::StreamsError::Write(e, r)) => (*r, Some(e)),
    };
    let write_error = write_error.or(out.flush().err());
    drop(out);
    if let Some(e) = &files_error {
        note(&format!(
            "flowpeek: {e} (after {} records; the run stopped there)",
            report.records
        ));
        return ExitCode::from(1);
    }
    if let Some(e) = &write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            note(&format!(
                "flowpeek: writing the report: {e} (after {} records)",
                report.records
            ));
            return ExitCode::from(1);
        }
        return ExitCode::SUCCESS;
    }
    let s = &report.stats;
    let line = format!(
        "{} packets, {} bytes, {} connections ({} partial), {} malformed, {} not TCP, {} IP fragments, {} orphans, {} late, {} bytes missing, in {:.3} s ({:.2} Mpps)",
        s.packets,
        s.bytes,
        report.records,
        s.flows_partial,
        s.malformed,
        s.not_tcp,
        s.ip_fragments,
        s.orphans,
        s.late,
        s.bytes_missing,
        report.elapsed.as_secs_f64(),
        s.packets as f64 / report.elapsed.as_secs_f64().max(1e-9) / 1e6,
    );
    let defrag = defrag_line(&s.defrag);
    let mut ok = true;
    if !json {
        // Under the table, within its width.
        ok &= writeln!(std::io::stdout(), "{}", wrap(&line, streams::TABLE_WIDTH)).is_ok();
        if let Some(d) = &defrag {
            ok &= writeln!(std::io::stdout(), "{}", wrap(d, streams::TABLE_WIDTH)).is_ok();
        }
    } else if summary {
        ok &= note(&line);
        if let Some(d) = &defrag {
            ok &= note(d);
        }
    }
    if report.refused_records > 0 {
        ok &= note(&format!(
            "flowpeek: warning: --buffer-memory ({} MiB) refused buffers: {} bytes of {} connections were not stored; their records say \"buffer_refused\" and count those bytes as missing",
            opts.engine.buffer_memory >> 20,
            s.bytes_refused,
            report.refused_records
        ));
    }
    if report.out_of_order > 0 {
        ok &= note(&format!(
            "flowpeek: note: {} records were written after later-started ones (more than {} connections completed while an earlier one was open)",
            report.out_of_order,
            streams::REORDER_WINDOW
        ));
    }
    if let Some(e) = &report.capture_error {
        // A capture cut short (tcpdump killed, disk full) is common: report it, keep
        // the results of every complete record.
        ok &= note(&format!(
            "flowpeek: warning: {e}; every packet before it was processed"
        ));
    }
    if report.stopped {
        note("flowpeek: stopped by a signal: the records of every connection seen so far were written");
        return ExitCode::from(EXIT_STOPPED);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn follow(
    capture: &std::path::Path,
    cfg: Config,
    conn: flowpeek::follow::ConnSelector,
    format: flowpeek::follow::Format,
) -> ExitCode {
    let stop = stop_flag();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printer = flowpeek::follow::Printer::new(format);
    let result = flowpeek::follow::run(capture, cfg, conn, &stop, |it| printer.item(&mut out, it));
    let sum = match result {
        Err(e) => {
            note(&format!("flowpeek: {e}"));
            return ExitCode::from(2);
        }
        Ok(Err(e)) => {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            note(&format!("flowpeek: writing the connection's bytes: {e}"));
            return ExitCode::from(1);
        }
        Ok(Ok(s)) => s,
    };
    if let Err(e) = out.flush() {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            note(&format!("flowpeek: writing the connection's bytes: {e}"));
            return ExitCode::from(1);
        }
    }
    if let Some(e) = &sum.capture_error {
        note(&format!(
            "flowpeek: warning: {e}; every packet before it was processed"
        ));
    }
    if sum.stopped {
        note("flowpeek: stopped by a signal");
        return ExitCode::from(EXIT_STOPPED);
    }
    if !sum.found {
        note(&format!(
            "flowpeek: no connection {} in {}: `flowpeek streams {}` lists them (number = line, from 0)",
            match conn {
                flowpeek::follow::ConnSelector::Number(n) => format!("number {n}"),
                flowpeek::follow::ConnSelector::Uid(u) => format!("with uid {u:016x}"),
                flowpeek::follow::ConnSelector::Endpoints(a, b) => format!("between {a} and {b}"),
            },
            capture.display(),
            capture.display()
        ));
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `text` broken after its commas so that no line is wider than `width` (a part wider than
/// that stays whole).
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut line_len = 0;
    for (i, part) in text.split_inclusive(", ").enumerate() {
        let part_len = part.trim_end().chars().count();
        if i > 0 && line_len + part_len > width {
            out.truncate(out.trim_end().len());
            out.push_str("\n  ");
            line_len = 2;
        }
        out.push_str(part);
        line_len += part.chars().count();
    }
    out
}

fn empty_summary() -> streams::StreamsSummary {
    streams::StreamsSummary {
        records: 0,
        stats: Default::default(),
        capture_error: None,
        stopped: false,
        out_of_order: 0,
        refused_records: 0,
        elapsed: std::time::Duration::ZERO,
    }
}

struct RunArgs {
    source: flowpeek::run::Source,
    plugins: PathBuf,
    log_dir: PathBuf,
    stats: Option<PathBuf>,
    pace: u64,
    loops: u32,
    drain_timeout: u64,
    engine: Config,
    no_watch: bool,
    cores: Option<usize>,
    quiet: bool,
    latency_sample: u64,
    latency_warmup: u64,
    budget: flowpeek::plugin::CallBudget,
}

/// Most worker threads `--cores` accepts.
const MAX_CORES: usize = 1024;

/// The CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `--cores`: 1 to [`MAX_CORES`]; more than the CPUs runs, with a warning from `run`.
fn parse_cores(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n == 0 || n > MAX_CORES {
        let cpus = cpus();
        return Err(format!(
            "{n} worker threads; use 1 to {cpus} (this machine has {cpus} CPUs), or leave --cores out to use them all"
        ));
    }
    Ok(n)
}

fn run(a: RunArgs) -> ExitCode {
    if let Some(n) = a.cores.filter(|&n| n > cpus()) {
        eprintln!(
            "flowpeek: warning: --cores {n} is more than the {} CPUs this process may run on: workers share CPUs (pinned modulo {}), which costs throughput; use --cores {} or fewer",
            cpus(),
            cpus(),
            cpus()
        );
    }
    let opts = flowpeek::run::RunOptions {
        source: a.source,
        plugins: a.plugins,
        log_dir: a.log_dir.clone(),
        engine: a.engine,
        pace: a.pace,
        loops: a.loops,
        drain_timeout: a.drain_timeout.saturating_mul(1_000_000_000),
        watch: !a.no_watch,
        cores: a.cores.unwrap_or_else(cpus),
        latency_sample: a.latency_sample,
        latency_warmup: a.latency_warmup,
        budget: a.budget,
    };
    if let Some(path) = &a.stats {
        // Found now, not after the whole run.
        if let Err(e) = probe_writable(path) {
            eprintln!(
                "flowpeek: cannot write stats to {}: {e}; give --stats a path in a writable directory",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    warn_if_no_plugin(&opts.plugins, opts.watch);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = on_stop_signals(std::sync::Arc::clone(&stop)) {
        eprintln!("flowpeek: warning: SIGINT, SIGTERM and SIGHUP will not stop cleanly: {e}");
    }
    let drops_label = match &opts.source {
        // The producer's count of frames it had to retry because the ring was full: nothing
        // is lost, the producer waited.
        flowpeek::run::Source::Shm(_) => "ring-full retries (producer)",
        _ => "dropped",
    };
    let quiet = a.quiet;
    let mut last: Vec<flowpeek::run::CoreSnapshot> = Vec::new();
    let report = flowpeek::run::run(&opts, &stop, |cores| {
        if quiet {
            return;
        }
        let mut line = String::from("flowpeek:");
        for (k, c) in cores.iter().enumerate() {
            let prev = last.get(k).copied().unwrap_or_default();
            let pps = c.packets - prev.packets;
            let bps = (c.bytes - prev.bytes) * 8;
            line.push_str(&format!(
                " core{k}: {:.3} Mpps {:.1} Mbit/s {} flows {} ev/s {} {drops_label} |",
                pps as f64 / 1e6,
                bps as f64 / 1e6,
                c.flows_live,
                c.events - prev.events,
                c.drops
            ));
        }
        line.pop();
        eprintln!("{line}");
        last = cores.to_vec();
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowpeek: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &a.stats {
        if let Err(e) = flowpeek::run::write_stats(path, &report) {
            eprintln!("flowpeek: cannot write stats to {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if !quiet {
        let s = &report.stats;
        eprintln!(
            "flowpeek: {} packets, {} flows, {} late, {} events in {:.3} s; plugin records in {}",
            s.packets,
            s.flows_created,
            s.late,
            s.events,
            report.elapsed.as_secs_f64(),
            a.log_dir.display()
        );
        if let Some(d) = defrag_line(&s.defrag) {
            eprintln!("flowpeek: {d}");
        }
        if let Some(h) = &report.latency {
            eprintln!(
                "flowpeek: latency (stamp to callback return, {} samples): p50 {} us, p99 {} us, p99.9 {} us, max {} us",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.value_at_quantile(0.999) as f64 / 1e3,
                h.max() as f64 / 1e3
            );
        }
        for (name, p) in &report.plugins {
            eprintln!(
                "flowpeek:   {name}: {} events, {} records, {} failures, {} overruns, {} generations{}",
                p.events,
                p.records,
                p.failures,
                p.overruns,
                p.generations,
                if p.slow_constructors > 0 {
                    format!(", {} constructors past the budget", p.slow_constructors)
                } else {
                    String::new()
                }
            );
        }
    }
    if report.plugins.is_empty() && !report.load_failures.is_empty() {
        // (A directory without any library was warned about at the start.)
        eprintln!(
            "flowpeek: warning: no plugin was loaded from {} ({} failed to load): packets were counted, nothing was recorded",
            opts.plugins.display(),
            report.load_failures.len()
        );
    }
    let unsupported = report.stats.unsupported_link;
    if unsupported > 0 {
        eprintln!(
            "flowpeek: warning: {unsupported} packets of an unsupported link type were skipped (\"unsupported_link\" in --stats); flowpeek decodes Ethernet, raw IP, Linux cooked (SLL, SLL2), loopback and 802.1Q"
        );
    }
    if report.corrupt_slots > 0 {
        eprintln!(
            "flowpeek: warning: {} corrupt ring slots were skipped (corrupt_slots in --stats)",
            report.corrupt_slots
        );
    }
    let mut code = ExitCode::SUCCESS;
    let lost: u64 = report.plugins.values().map(|p| p.records_lost).sum();
    if lost > 0 {
        for (name, p) in report.plugins.iter().filter(|(_, p)| p.records_lost > 0) {
            eprintln!(
                "flowpeek: error: plugin {name}: {} records lost (not written to {}: see the first error above)",
                p.records_lost,
                a.log_dir.display()
            );
        }
        code = ExitCode::from(1);
    }
    if let Some(e) = &report.capture_error {
        if e.is_fatal() {
            eprintln!("flowpeek: error: {e}; every packet before it was processed");
            code = ExitCode::from(1);
        } else {
            eprintln!("flowpeek: warning: {e}; every packet before it was processed");
        }
    }
    code
}

/// Fails if `path` cannot be written, leaving an existing file as it was (and no file where
/// there was none).
fn probe_writable(path: &std::path::Path) -> std::io::Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Warns when the plugin directory holds no library: the run would count packets and record
/// nothing.
fn warn_if_no_plugin(dir: &std::path::Path, watch: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        // Reported by the run, with the reason.
        return;
    };
    let any = entries
        .flatten()
        .any(|e| flowpeek::plugin::is_plugin_file(&e.path()));
    if !any {
        eprintln!(
            "flowpeek: warning: no plugin (*.so) in {}: packets are counted, nothing is recorded{}",
            dir.display(),
            if watch {
                "; a plugin copied into the directory loads while the run goes on"
            } else {
                ""
            }
        );
    }
}

/// After the first stop signal, how long the run may take to end its flows and flush before
/// a further signal makes the process exit at once.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGINT, SIGTERM and SIGHUP (systemd, docker and `timeout` stop with TERM) set `stop`: the
/// workers end their flows, the plugins flush their records and the stats are written. A
/// further signal, once [`STOP_GRACE`] has passed since the first, exits at once (130): the
/// way out of a run whose plugin is stuck in a callback, which no flag can interrupt.
fn on_stop_signals(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), ctrlc::Error> {
    let mut first: Option<std::time::Instant> = None;
    ctrlc::set_handler(move || {
        let Some(at) = first else {
            first = Some(std::time::Instant::now());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "flowpeek: stopping: ending flows and flushing records and stats (signal again after {} s to exit at once)",
                STOP_GRACE.as_secs()
            );
            return;
        };
        // A second signal soon after the first (an impatient double Ctrl-C) still leaves
        // the run its grace period to flush.
        std::thread::sleep(STOP_GRACE.saturating_sub(at.elapsed()));
        eprintln!(
            "flowpeek: exiting at once: the workers did not finish within {} s of the stop (a plugin callback may be stuck); records they still buffered are lost",
            STOP_GRACE.as_secs()
        );
        let _ = std::io::stdout().flush();
        std::process::exit(130);
    })
}

/// The defragmenter's counters in one line, when there were fragments.
fn defrag_line(d: &flowpeek::ip::Stats) -> Option<String> {
    if d.fragments == 0 {
        return None;
    }
    let drops: Vec<String> = flowpeek::ip::DropReason::ALL
        .iter()
        .filter(|r| d.dropped(**r) > 0)
        .map(|r| format!("{} {}", d.dropped(*r), r.name()))
        .collect();
    Some(format!(
        "IP defragmentation: {} fragments, {} datagrams reassembled, {} duplicates, {} overlaps ({} with differing bytes), {} timed out, {} evicted, {} still held; dropped: {}",
        d.fragments,
        d.reassembled,
        d.duplicates,
        d.overlaps,
        d.overlaps_differing,
        d.timeouts,
        d.evictions,
        d.in_flight,
        if drops.is_empty() { "none".to_string() } else { drops.join(", ") }
    ))
}
