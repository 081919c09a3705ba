//! `flowpeek streams` inputs and cores, on the real captures of the shared corpus: the
//! sequential reader yields exactly the packets of the memory-mapped reader (records cut
//! by every chunk boundary included), the records are the same for any `--cores`, and the
//! same from a file, standard input, a pipe, a FIFO and gzip / zstd / xz compressed copies;
//! several inputs are read one after the other.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flowpeek::flow::Config;
use flowpeek::io::stream::{Chunk, ChunkReader, InputSpec};
use flowpeek::io::CaptureFile;
use flowpeek::streams::{self, StreamsOptions};

fn corpus() -> PathBuf {
    flowpeek::testing::corpus_dir()
}

/// Every capture of the corpus: the generated ones and the public ones (pcap and pcapng).
fn captures() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![corpus()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "pcap" || x == "pcapng" || x == "cap")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    assert!(out.len() > 100, "only {} captures in the corpus", out.len());
    out
}

fn options() -> StreamsOptions {
    StreamsOptions {
        sha256: true,
        engine: Config {
            tcp_timeout: 3600 * 1_000_000_000,
            ..Config::default()
        },
        buffer: 1 << 18,
        write: None,
    }
}

/// `(ts, link code, frame)` of each packet.
type Packets = Vec<(u64, u32, Vec<u8>)>;

/// Every packet through the memory map, and the damaged record's offset, if any.
fn mapped(path: &Path) -> Option<(Packets, Option<u64>)> {
    let cap = CaptureFile::open(path).ok()?;
    let mut v = Vec::new();
    let mut err = None;
    for p in cap.packets() {
        match p {
            Ok(p) => v.push((p.ts_nanos, p.link_code, p.data.to_vec())),
            Err(e) => err = Some(e.offset().unwrap_or(u64::MAX)),
        }
    }
    Some((v, err))
}

/// The same through the sequential reader, `chunk` bytes per read.
fn sequential(path: &Path, chunk: usize) -> (Vec<(u64, Vec<u8>)>, Option<u64>) {
    let mut r = ChunkReader::new(vec![InputSpec::Path(path.to_path_buf())]).with_chunk_size(chunk);
    let mut c = Chunk::default();
    let mut v = Vec::new();
    let mut index = 0;
    while r.fill(&mut c) {
        assert_eq!(c.first, index, "{}: chunk numbering", path.display());
        index += c.packets.len() as u64;
        for p in &c.packets {
            v.push((p.ts, c.frame(p).to_vec()));
        }
    }
    (v, r.error.and_then(|e| e.offset()))
}

/// Every capture of the corpus, read in 4 KiB, 1 MiB and the default chunks: the same
/// packets, in the same order, with the same times, as the memory-mapped reader, and the
/// same damaged record at the same offset where there is one.
#[test]
fn sequential_reader_matches_the_map_on_every_capture() {
    let mut checked = 0;
    let mut packets = 0;
    for path in captures() {
        let Some((want, want_err)) = mapped(&path) else {
            continue;
        };
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        for chunk in [4096, 1 << 20, flowpeek::io::stream::CHUNK] {
            if chunk == 4096 && size > 8 << 20 {
                continue; // the small chunk on the small files: thousands of boundaries
            }
            let (got, got_err) = sequential(&path, chunk);
            assert_eq!(got.len(), want.len(), "{} chunk {chunk}", path.display());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.0 == w.0 && g.1 == w.2,
                    "{} chunk {chunk}: packet {i} differs",
                    path.display()
                );
            }
            assert_eq!(got_err, want_err, "{} chunk {chunk}: error", path.display());
        }
        checked += 1;
        packets += want.len();
    }
    assert!(
        checked > 100 && packets > 100_000,
        "{checked} captures, {packets} packets"
    );
}

fn json_lines(inputs: &[InputSpec], cores: usize) -> Vec<String> {
    let r = streams::run_cores(inputs, &options(), cores, |_, _| {})
        .unwrap_or_else(|e| panic!("{inputs:?}: {e}"));
    r.records
        .iter()
        .map(|r| format!("{} {}", r.serial, r.to_json()))
        .collect()
}

/// The records, their order and their serials are the same on 1, 2 and 3 cores, for
/// every capture of the corpus.
#[test]
fn records_are_the_same_for_any_number_of_cores() {
    let mut records = 0;
    let mut multi = 0;
    for path in captures() {
        if CaptureFile::open(&path).is_err() {
            continue;
        }
        let spec = [InputSpec::Path(path.clone())];
        let one = json_lines(&spec, 1);
        for cores in [2, 3] {
            let many = json_lines(&spec, cores);
            assert_eq!(one.len(), many.len(), "{} on {cores} cores", path.display());
            for (a, b) in one.iter().zip(&many) {
                assert_eq!(a, b, "{} on {cores} cores", path.display());
            }
        }
        records += one.len();
        multi += usize::from(one.len() > 1);
    }
    assert!(records > 10_000 && multi > 50, "{records} records");
}

fn flowpeek() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowpeek"))
}

/// `flowpeek streams --json ARGS` with `stdin` fed from `input` (if any): stdout.
fn cli(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = flowpeek()
        .arg("streams")
        .arg("--json")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = input.map(|bytes| {
        let mut stdin = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    assert!(
        out.status.success(),
        "flowpeek streams {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("streams_inputs");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The same records from the file, from `-` (standard input, a pipe), from a FIFO, and
/// from gzip, zstd and xz copies of it (named without their suffix: the magic number
/// decides), read whole or through stdin.
#[test]
fn stdin_pipe_fifo_and_compressed_inputs_give_the_file_s_records() {
    for name in [
        "gen/mixed.pcap",
        "public/zeek/tcp/http-on-irc-port-missing-syn.pcapng",
    ] {
        let path = corpus().join(name);
        if !path.exists() && name.starts_with("public") {
            continue;
        }
        let raw = std::fs::read(&path).unwrap();
        let p = path.to_str().unwrap();
        let want = cli(&[p], None);
        assert!(want.len() > 100, "{name}: {} bytes of records", want.len());
        assert_eq!(cli(&["-"], Some(&raw)), want, "{name} on stdin");
        assert_eq!(
            cli(&["--cores", "2", "-"], Some(&raw)),
            want,
            "{name} on stdin, 2 cores"
        );

        let fifo = tmp("capture.fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let feeder = {
            let fifo = fifo.clone();
            let raw = raw.clone();
            std::thread::spawn(move || std::fs::write(fifo, raw).unwrap())
        };
        assert_eq!(
            cli(&[fifo.to_str().unwrap()], None),
            want,
            "{name} from a FIFO"
        );
        feeder.join().unwrap();

        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&raw[..], 3).unwrap();
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&raw).unwrap();
            e.finish().unwrap()
        };
        for (kind, bytes, magic) in [
            ("gzip", &gz, &[0x1f, 0x8b][..]),
            ("zstd", &zst, &[0x28, 0xb5, 0x2f, 0xfd][..]),
            ("xz", &xz, &[0xfd, b'7', b'z', b'X', b'Z'][..]),
        ] {
            assert!(bytes.starts_with(magic) && bytes.len() < raw.len());
            let f = tmp(&format!("capture-{kind}"));
            std::fs::write(&f, bytes).unwrap();
            assert_eq!(cli(&[f.to_str().unwrap()], None), want, "{name} as {kind}");
            assert_eq!(cli(&["-"], Some(bytes)), want, "{name} as {kind} on stdin");
        }
        // A compressed capture cut short: every packet before the cut counts, and the
        // run warns, naming the file and the problem (as for a truncated capture).
        let cut = tmp("capture-cut.gz");
        std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
        let out = flowpeek()
            .args(["streams", "--json", cut.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} cut: {err}");
        assert!(
            err.contains("capture-cut.gz") && err.contains("decompressing it (gzip)"),
            "{name} cut: {err}"
        );
        assert!(!out.stdout.is_empty(), "{name} cut: no records");
    }
}

/// Two captures in one run: the records of the first (all created before the second's
/// packets) then the second's, each as its own run gives them.
#[test]
fn several_inputs_are_read_one_after_the_other() {
    let a = corpus().join("gen/http-small.pcap");
    let b = corpus().join("gen/mixed.pcap");
    let ra = cli(&[a.to_str().unwrap()], None);
    let rb = cli(&[b.to_str().unwrap()], None);
    let both = cli(&[a.to_str().unwrap(), b.to_str().unwrap()], None);
    let mut want = ra.clone();
    want.extend_from_slice(&rb);
    let lines = |v: &[u8]| String::from_utf8_lossy(v).lines().count();
    assert_eq!(lines(&both), lines(&ra) + lines(&rb));
    assert_eq!(both, want);
    // One input missing: nothing runs, and the message names it.
    let out = flowpeek()
        .args(["streams", a.to_str().unwrap(), "/nonexistent/x.pcap"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.pcap"));
}

/// `events --cores N` (flow order): the same lines on 1, 2 and 3 cores, for every capture
/// of the corpus, and the same lines as callback order, only regrouped flow by flow.
#[test]
fn events_in_flow_order_are_the_same_for_any_number_of_cores() {
    use flowpeek::trace::{self, Order};
    let never = std::sync::atomic::AtomicBool::new(false);
    let lines = |path: &Path, cores, order| {
        let mut v = Vec::new();
        trace::run_inputs(
            &[InputSpec::Path(path.to_path_buf())],
            Config::default(),
            cores,
            1,
            order,
            &never,
            |l| {
                v.push(l.to_owned());
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        v
    };
    let mut total = 0;
    let mut regrouped = 0;
    for path in captures() {
        let size = std::fs::metadata(&path).unwrap().len();
        if CaptureFile::open(&path).is_err() || size > 8 << 20 {
            continue;
        }
        let callback = lines(&path, 1, Order::Callback);
        let one = lines(&path, 1, Order::Flow);
        for cores in [2, 3] {
            assert_eq!(
                lines(&path, cores, Order::Flow),
                one,
                "{} on {cores} cores",
                path.display()
            );
        }
        regrouped += usize::from(one != callback);
        let (mut a, mut b) = (callback.clone(), one.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{}: flow order loses or adds lines", path.display());
        total += one.len();
    }
    assert!(
        total > 10_000 && regrouped > 10,
        "{total} lines, {regrouped} regrouped"
    );
}

/// Peak RSS of `flowpeek streams` reading a capture several times the bound from a pipe
/// (4 time-shifted copies of gen/http-bulk + gen/http-small, 330 MB): at most 64 MiB
/// plus the reader's pool, whatever the input's size. The peak is VmHWM, polled from
/// /proc while the child runs.
#[test]
fn memory_stays_bounded_on_a_large_input() {
    let parts: Vec<Vec<u8>> = ["gen/http-bulk.pcap", "gen/http-small.pcap"]
        .iter()
        .map(|n| std::fs::read(corpus().join(n)).unwrap())
        .collect();
    let copies = 4u32;
    let mut child = flowpeek()
        .args(["streams", "--json", "--no-sha256", "--cores", "2", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let total: usize = parts.iter().map(|p| p.len() - 24).sum::<usize>() * copies as usize;
    let feeder = std::thread::spawn(move || {
        // One legacy pcap stream: the first header, then every copy's records, each copy
        // shifted by 1000 s (past the tombstones' lifetime, so the connections are new).
        stdin.write_all(&parts[0][..24]).unwrap();
        for k in 0..copies {
            for p in &parts {
                assert_eq!(&p[..4], &0xa1b2_c3d4u32.to_le_bytes(), "little-endian pcap");
                let mut recs = p[24..].to_vec();
                let mut at = 0;
                while at + 16 <= recs.len() {
                    let sec = u32::from_le_bytes(recs[at..at + 4].try_into().unwrap());
                    recs[at..at + 4].copy_from_slice(&(sec + 1000 * k).to_le_bytes());
                    let caplen = u32::from_le_bytes(recs[at + 8..at + 12].try_into().unwrap());
                    at += 16 + caplen as usize;
                }
                stdin.write_all(&recs).unwrap();
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().count()
    });
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    feeder.join().unwrap();
    let records = counter.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(records > 30_000, "{records} records");
    let bound =
        64 * 1024 + (flowpeek::io::stream::POOL * flowpeek::io::stream::CHUNK / 1024) as u64;
    assert!(peak_kib > 0, "VmHWM never read");
    assert!(
        peak_kib <= bound,
        "peak RSS {peak_kib} KiB over {bound} KiB on a {} MB input",
        total >> 20
    );
}

/// On a terminal (a pty, through script(1)) a large input gets a progress bar on stderr:
/// bytes, packets/s; with stderr not a terminal, nothing.
#[test]
fn progress_bar_on_a_terminal_only() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("script(1) is missing (util-linux): the progress bar is not checked");
        return;
    }
    let cap = corpus().join("gen/http-bulk.pcap");
    let bin = env!("CARGO_BIN_EXE_flowpeek");
    // Through a pipe: size unknown, so the bar shows (a spinner with bytes and rate). The
    // pipe stays open a second after the capture: a run shorter than the bar's first
    // redraw (a fast machine reads the 55 MB in a fraction of one) would show nothing.
    let cmd = format!(
        "(cat '{}'; sleep 1) | '{bin}' streams --json - >/dev/null",
        cap.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("packets") && tty.contains("Mpps") && tty.contains("MiB"),
        "no progress bar on the terminal: {tty:?}"
    );
    let plain = flowpeek()
        .args(["streams", "--json", "-"])
        .stdin(std::fs::File::open(&cap).unwrap())
        .output()
        .unwrap();
    assert!(plain.status.success());
    assert!(
        !String::from_utf8_lossy(&plain.stderr).contains("packets"),
        "progress on a non-terminal stderr"
    );
}

/// On a terminal, inputs of known size get the bar with a total and an ETA once they add up
/// to 64 MiB, and nothing below that: http-bulk (55 MB) alone shows nothing; it and
/// http-small named ten times each (826 MB, read one after the other) show
/// `bytes/total ... ETA`.
#[test]
fn progress_bar_with_a_known_size_and_its_cutoff() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("script(1) is missing (util-linux): the progress bar is not checked");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_flowpeek");
    let bulk = corpus().join("gen/http-bulk.pcap");
    let small = corpus().join("gen/http-small.pcap");
    let on_tty = |args: &str| -> String {
        let cmd = format!("'{bin}' streams --json --no-sha256 {args} >/dev/null");
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        let tty = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{cmd}: {tty}");
        tty
    };
    let below = on_tty(&format!("'{}'", bulk.display()));
    assert!(
        std::fs::metadata(&bulk).unwrap().len() < 64 << 20,
        "the corpus file grew past the cutoff: pick a smaller one"
    );
    assert!(
        !below.contains("ETA") && !below.contains("packets"),
        "a bar for an input under 64 MiB: {below:?}"
    );
    let many: Vec<String> = (0..10)
        .flat_map(|_| [&bulk, &small])
        .map(|p| format!("'{}'", p.display()))
        .collect();
    let above = on_tty(&many.join(" "));
    assert!(
        above.contains("ETA") && above.contains("packets") && above.contains("MiB/"),
        "no bar with a total and an ETA for 826 MB of files: {above:?}"
    );
}

/// The reader's pool of chunks survives thousands of small chunks handed to one and to
/// three consumers: every chunk comes back (a lost one would leave the reader waiting
/// for a free chunk forever: a hang, caught here by a deadline), and every consumer sees
/// every packet once, in order.
#[test]
fn chunk_pool_survives_thousands_of_chunks() {
    use flowpeek::io::stream::fan_out;
    let path = corpus().join("gen/mixed.pcap");
    let want = CaptureFile::open(&path).unwrap().packets().count() as u64;
    for consumers in [1usize, 3] {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let reader = ChunkReader::new(vec![InputSpec::Path(p)]).with_chunk_size(2048);
            let never = std::sync::atomic::AtomicBool::new(false);
            let (results, summary, ()) = fan_out(
                reader,
                consumers,
                &never,
                |_, feed| {
                    let (mut n, mut next) = (0u64, 0u64);
                    feed.for_each(|c| {
                        assert_eq!(c.first, next, "chunks out of order");
                        next += c.packets.len() as u64;
                        n += c.packets.len() as u64;
                    });
                    n
                },
                |_| (),
            );
            let counts: Vec<u64> = results.into_iter().map(|r| r.unwrap()).collect();
            let _ = tx.send((counts, summary.packets));
        });
        let (counts, read) = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{consumers} consumers: the reader or a consumer hangs"));
        assert_eq!(read, want);
        assert_eq!(counts, vec![want; consumers]);
    }
}
