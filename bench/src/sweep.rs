//! `flowpeek-bench sweep`: a grid of `run` points (frame sizes × flows × cores × plugins),
//! each flat out, then latency against load (the first grid point offered fractions of its
//! flat-out rate), written as CSV, JSON and an SVG plot (hand-written SVG, no dependency).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};

use crate::harness::{run_point, Consumer, Env, Measurement, Plugins, Point, Sizes};

/// Arguments of `flowpeek-bench sweep`.
#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    /// Where sweep.csv, sweep.json and sweep.svg go.
    #[arg(long, default_value = "target/sweep")]
    pub out_dir: PathBuf,
    /// Frame sizes (54..=1514, or imix).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,128,256,512,1024,1514,imix"
    )]
    pub sizes: Vec<Sizes>,
    /// Concurrent connections.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
    pub flows: Vec<u32>,
    /// Worker cores.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub cores: Vec<usize>,
    /// Plugin sets: none, noop, streamhash, streamhash-crc32, streamhash-xxh3, or a directory.
    #[arg(long, value_delimiter = ',', default_value = "none,noop")]
    pub plugins: Vec<Plugins>,
    /// Seconds per point.
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// Loads for the latency curve, as fractions of the first point's flat-out rate.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.5,0.75,0.9")]
    pub loads: Vec<f64>,
    /// Every Nth packet, measure latency.
    #[arg(long, default_value_t = 64)]
    pub latency_sample: u64,
    /// Slots per shm ring.
    #[arg(long, default_value_t = 8192)]
    pub slots: u32,
    /// The CI grid: 64 and 1514 bytes, 1000 flows, 1 core, noop, 0.3 s per point, one load.
    #[arg(long)]
    pub tiny: bool,
    /// Print the JSON on stdout too.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Directory with the binaries (default: this executable's).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// One row: a grid point ("grid") or a latency-against-load point ("load").
#[derive(Clone, Debug)]
pub struct Row {
    /// "grid" or "load".
    pub kind: &'static str,
    /// The measurement.
    pub m: Measurement,
}

/// The CSV header.
pub const CSV_HEADER: &str = "kind,size,mean_frame_bytes,flows,cores,plugins,rate_offered,seconds,packets,mpps,gbps,ring_full_frames,flows_evicted,buffer_refusals,plugin_failures,cycles_per_packet,cycles_source,latency_samples,latency_p50_ns,latency_p99_ns,latency_p999_ns,latency_max_ns,rss_kib,mem_per_flow_bytes";

fn csv_row(r: &Row) -> String {
    let m = &r.m;
    let p = &m.point;
    let l = m.latency.unwrap_or_default();
    format!(
        "{},{},{:.1},{},{},{},{},{:.3},{},{:.4},{:.4},{},{},{},{},{:.1},{},{},{},{},{},{},{},{:.1}",
        r.kind,
        p.sizes.label(),
        p.sizes.mean(),
        p.flows,
        p.cores,
        p.plugins.label().replace(',', "_"),
        p.rate,
        m.seconds,
        m.packets(),
        m.pps() / 1e6,
        m.bps() / 1e9,
        m.ring_full_frames(),
        m.cores.iter().map(|c| c.flows_evicted).sum::<u64>(),
        m.cores.iter().map(|c| c.buffer_refusals).sum::<u64>(),
        m.plugin_failures,
        m.cycles_per_packet(),
        m.cycles_source,
        l.samples,
        l.p50,
        l.p99,
        l.p999,
        l.max,
        m.rss_kib,
        m.mem_per_flow()
    )
}

/// Line rate in Mpps for `gbps` Gbit/s Ethernet and `size`-byte frames (preamble and gap:
/// 20 bytes).
pub fn line_rate_mpps(gbps: f64, size: f64) -> f64 {
    gbps * 1e9 / ((size + 20.0) * 8.0) / 1e6
}

const W: f64 = 420.0;
const H: f64 = 300.0;
const ML: f64 = 60.0;
const MR: f64 = 20.0;
const MT: f64 = 30.0;
const MB: f64 = 45.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

struct Panel {
    x0: f64,
    title: String,
    xlabel: String,
    ylabel: String,
    xr: (f64, f64),
    yr: (f64, f64),
    ylog: bool,
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        self.x0 + ML + (x - self.xr.0) / (self.xr.1 - self.xr.0).max(1e-12) * (W - ML - MR)
    }
    fn py(&self, y: f64) -> f64 {
        let f = if self.ylog {
            let (a, b) = (self.yr.0.max(1e-12).log10(), self.yr.1.max(1e-12).log10());
            (y.max(1e-12).log10() - a) / (b - a).max(1e-12)
        } else {
            (y - self.yr.0) / (self.yr.1 - self.yr.0).max(1e-12)
        };
        MT + (1.0 - f.clamp(-0.05, 1.05)) * (H - MT - MB)
    }
    fn frame(&self, s: &mut String) {
        let (l, r, t, b) = (self.x0 + ML, self.x0 + W - MR, MT, H - MB);
        let _ = writeln!(
            s,
            r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            r - l,
            b - t
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="18" text-anchor="middle" font-weight="bold">{}</text>"#,
            (l + r) / 2.0,
            esc(&self.title)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (l + r) / 2.0,
            H - 8.0,
            esc(&self.xlabel)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
            self.x0 + 14.0,
            (t + b) / 2.0,
            self.x0 + 14.0,
            (t + b) / 2.0,
            esc(&self.ylabel)
        );
        for i in 0..=4 {
            let x = self.xr.0 + (self.xr.1 - self.xr.0) * f64::from(i) / 4.0;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="10">{}</text>"#,
                self.px(x),
                b + 14.0,
                fmt_num(x)
            );
        }
        let ticks: Vec<f64> = if self.ylog {
            let (a, b) = (
                self.yr.0.max(1e-12).log10().floor() as i32,
                self.yr.1.max(1e-12).log10().ceil() as i32,
            );
            (a..=b)
                .map(|e| 10f64.powi(e))
                .filter(|v| *v >= self.yr.0 * 0.999 && *v <= self.yr.1 * 1.001)
                .collect()
        } else {
            (0..=4)
                .map(|i| self.yr.0 + (self.yr.1 - self.yr.0) * f64::from(i) / 4.0)
                .collect()
        };
        for y in ticks {
            let _ = writeln!(
                s,
                r##"<line x1="{l}" x2="{r}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10">{}</text>"##,
                l - 4.0,
                self.py(y) + 3.0,
                fmt_num(y),
                py = self.py(y)
            );
        }
    }
    fn line(&self, s: &mut String, pts: &[(f64, f64)], color: &str, dash: bool, dots: bool) {
        if pts.is_empty() {
            return;
        }
        let d: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"{}/>"#,
            d.join(" "),
            if dash {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            }
        );
        if dots {
            for &(x, y) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    self.px(x),
                    self.py(y)
                );
            }
        }
    }
    fn legend(&self, s: &mut String, items: &[(String, &str, bool)]) {
        for (i, (label, color, dash)) in items.iter().enumerate() {
            let y = MT + 12.0 + i as f64 * 13.0;
            let x = self.x0 + ML + 8.0;
            let _ = writeln!(
                s,
                r#"<line x1="{x}" x2="{}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2"{}/><text x="{}" y="{}" font-size="10">{}</text>"#,
                x + 16.0,
                if *dash {
                    r#" stroke-dasharray="5,3""#
                } else {
                    ""
                },
                x + 20.0,
                y + 3.0,
                esc(label)
            );
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The SVG: Mpps and Gbit/s against frame size (with 10/40/100 GbE line rate), latency
/// percentiles against load.
pub fn svg(rows: &[Row]) -> String {
    let grid: Vec<&Row> = rows.iter().filter(|r| r.kind == "grid").collect();
    let load: Vec<&Row> = rows.iter().filter(|r| r.kind == "load").collect();
    // Series: one per (flows, cores, plugins).
    let mut series: Vec<(String, Vec<&Measurement>)> = Vec::new();
    for r in &grid {
        let p = &r.m.point;
        let key = format!("{} flows, {} core, {}", p.flows, p.cores, p.plugins.label());
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(&r.m),
            None => series.push((key, vec![&r.m])),
        }
    }
    for (_, v) in &mut series {
        v.sort_by(|a, b| a.point.sizes.mean().total_cmp(&b.point.sizes.mean()));
    }
    let sizes = (54.0, 1518.0);
    let lr = [(10.0, "10 GbE"), (40.0, "40 GbE"), (100.0, "100 GbE")];
    let curve = |g: f64| -> Vec<(f64, f64)> {
        (0..=40)
            .map(|i| {
                let s = sizes.0 + (sizes.1 - sizes.0) * f64::from(i) / 40.0;
                (s, line_rate_mpps(g, s))
            })
            .collect()
    };
    let max_mpps = grid
        .iter()
        .map(|r| r.m.pps() / 1e6)
        .fold(line_rate_mpps(100.0, 54.0), f64::max);
    let min_mpps = grid
        .iter()
        .map(|r| r.m.pps() / 1e6)
        .filter(|v| *v > 0.0)
        .fold(line_rate_mpps(10.0, 1518.0), f64::min);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#,
        W * 3.0
    );
    // Panel 1: Mpps.
    let p1 = Panel {
        x0: 0.0,
        title: "Packet rate vs frame size".into(),
        xlabel: "frame size (bytes)".into(),
        ylabel: "Mpps (log)".into(),
        xr: sizes,
        yr: (min_mpps * 0.5, max_mpps * 1.5),
        ylog: true,
    };
    p1.frame(&mut s);
    let mut legend: Vec<(String, &str, bool)> = Vec::new();
    for (i, (g, name)) in lr.iter().enumerate() {
        p1.line(&mut s, &curve(*g), COLORS[5 + i % 3], true, false);
        legend.push((format!("{name} line rate"), COLORS[5 + i % 3], true));
    }
    for (i, (k, v)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = v
            .iter()
            .map(|m| (m.point.sizes.mean(), m.pps() / 1e6))
            .collect();
        p1.line(&mut s, &pts, COLORS[i % 5], false, true);
        legend.push((k.clone(), COLORS[i % 5], false));
    }
    p1.legend(&mut s, &legend);
    // Panel 2: Gbit/s.
    let max_g = grid.iter().map(|r| r.m.bps() / 1e9).fold(100.0, f64::max);
    let min_g = grid
        .iter()
        .map(|r| r.m.bps() / 1e9)
        .filter(|v| *v > 0.0)
        .fold(1.0, f64::min);
    let p2 = Panel {
        x0: W,
        title: "Throughput vs frame size".into(),
        xlabel: "frame size (bytes)".into(),
        ylabel: "Gbit/s of frames (log)".into(),
        xr: sizes,
        yr: (min_g * 0.5, max_g * 1.5),
        ylog: true,
    };
    p2.frame(&mut s);
    let mut legend2: Vec<(String, &str, bool)> = Vec::new();
    for (i, (g, name)) in lr.iter().enumerate() {
        // Frame bits at line rate: size / (size + 20) of the link.
        let pts: Vec<(f64, f64)> = curve(*g)
            .into_iter()
            .map(|(x, mpps)| (x, mpps * 1e6 * x * 8.0 / 1e9))
            .collect();
        p2.line(&mut s, &pts, COLORS[5 + i % 3], true, false);
        legend2.push((format!("{name} line rate"), COLORS[5 + i % 3], true));
    }
    for (i, (k, v)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = v
            .iter()
            .map(|m| (m.point.sizes.mean(), m.bps() / 1e9))
            .collect();
        p2.line(&mut s, &pts, COLORS[i % 5], false, true);
        legend2.push((k.clone(), COLORS[i % 5], false));
    }
    p2.legend(&mut s, &legend2);
    // Panel 3: latency against load.
    let mut lat: Vec<(f64, [f64; 3])> = load
        .iter()
        .filter_map(|r| {
            r.m.latency.map(|l| {
                (
                    r.m.pps() / 1e6,
                    [l.p50 as f64 / 1e3, l.p99 as f64 / 1e3, l.p999 as f64 / 1e3],
                )
            })
        })
        .collect();
    lat.sort_by(|a, b| a.0.total_cmp(&b.0));
    let xmax = lat.iter().map(|l| l.0).fold(0.0, f64::max) * 1.1;
    let ys = lat.iter().flat_map(|l| l.1);
    let (ymin, ymax) = ys.fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let p3 = Panel {
        x0: 2.0 * W,
        title: match load.first() {
            Some(r) => format!(
                "Latency vs load ({} B, {} flows, {})",
                r.m.point.sizes.label(),
                r.m.point.flows,
                r.m.point.plugins.label()
            ),
            None => "Latency vs load (not measured)".into(),
        },
        xlabel: "load (Mpps processed)".into(),
        ylabel: "push→callback latency (µs, log)".into(),
        xr: (0.0, xmax.max(1e-3)),
        yr: if lat.is_empty() {
            (1.0, 1000.0)
        } else {
            (ymin.max(0.01) * 0.5, ymax.max(ymin * 2.0) * 2.0)
        },
        ylog: true,
    };
    p3.frame(&mut s);
    let mut legend3: Vec<(String, &str, bool)> = Vec::new();
    for (i, name) in ["p50", "p99", "p99.9"].iter().enumerate() {
        let pts: Vec<(f64, f64)> = lat.iter().map(|l| (l.0, l.1[i])).collect();
        p3.line(&mut s, &pts, COLORS[i], false, true);
        legend3.push(((*name).to_string(), COLORS[i], false));
    }
    p3.legend(&mut s, &legend3);
    s.push_str("</svg>\n");
    s
}

/// Runs the grid and the load points; returns the rows.
pub fn sweep(a: &SweepArgs, env: &mut Env) -> Result<Vec<Row>, String> {
    let (sizes, flows, cores, plugins, duration, loads) = if a.tiny {
        (
            vec![Sizes::Fixed(64), Sizes::Fixed(1514)],
            vec![1000],
            vec![1],
            vec![Plugins::noop()],
            0.3,
            vec![0.5],
        )
    } else {
        (
            a.sizes.clone(),
            a.flows.clone(),
            a.cores.clone(),
            a.plugins.clone(),
            a.duration,
            a.loads.clone(),
        )
    };
    let mut points = Vec::new();
    for &c in &cores {
        for pl in &plugins {
            for &f in &flows {
                for sz in &sizes {
                    points.push(Point {
                        sizes: sz.clone(),
                        flows: f,
                        cores: c,
                        plugins: pl.clone(),
                        consumer: Consumer::Flowpeek,
                        duration,
                        rate: 0,
                        latency_sample: a.latency_sample,
                        slots: a.slots,
                        conn_packets: 0,
                    });
                }
            }
        }
    }
    let total = points.len() + loads.len();
    let mut rows = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let m = run_point(env, p)?;
        if !a.quiet {
            eprintln!(
                "flowpeek-bench sweep [{}/{total}] {}: {:.3} Mpps, {:.2} Gbit/s",
                i + 1,
                p.describe(),
                m.pps() / 1e6,
                m.bps() / 1e9
            );
        }
        rows.push(Row { kind: "grid", m });
    }
    if let Some(first) = rows.first().map(|r| r.m.clone()) {
        for (j, &f) in loads.iter().enumerate() {
            let p = Point {
                rate: (first.pps() * f).max(1.0) as u64,
                ..first.point.clone()
            };
            let m = run_point(env, &p)?;
            if !a.quiet {
                let l = m.latency.unwrap_or_default();
                eprintln!(
                    "flowpeek-bench sweep [{}/{total}] load {:.0}% ({:.3} Mpps): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
                    points.len() + j + 1,
                    f * 100.0,
                    m.pps() / 1e6,
                    l.p50 as f64 / 1e3,
                    l.p99 as f64 / 1e3,
                    l.p999 as f64 / 1e3
                );
            }
            rows.push(Row { kind: "load", m });
        }
    }
    Ok(rows)
}

/// `flowpeek-bench sweep`.
pub fn sweep_main(a: SweepArgs) -> ExitCode {
    let mut env = match Env::new(a.bin_dir.clone(), false) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("flowpeek-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rows = match sweep(&a, &mut env) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowpeek-bench: {e}");
            return ExitCode::from(1);
        }
    };
    let write = || -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
        std::fs::create_dir_all(&a.out_dir)?;
        let csv = a.out_dir.join("sweep.csv");
        let mut text = String::from(CSV_HEADER);
        text.push('\n');
        for r in &rows {
            text.push_str(&csv_row(r));
            text.push('\n');
        }
        std::fs::write(&csv, text)?;
        let js = a.out_dir.join("sweep.json");
        let v: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = r.m.to_json();
                v["kind"] = json!(r.kind);
                v
            })
            .collect();
        std::fs::write(
            &js,
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        )?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        let sv = a.out_dir.join("sweep.svg");
        std::fs::write(&sv, svg(&rows))?;
        Ok((csv, js, sv))
    };
    match write() {
        Ok((csv, js, sv)) => {
            if !a.json {
                println!(
                    "{:<6}{:>8}{:>7}{:>8}{:>12}{:>10}{:>10}{:>10}{:>12}{:>12}{:>12}",
                    "kind",
                    "size",
                    "cores",
                    "flows",
                    "plugins",
                    "Mpps",
                    "Gbit/s",
                    "cyc/pkt",
                    "p50 µs",
                    "p99 µs",
                    "B/flow"
                );
                for r in &rows {
                    let m = &r.m;
                    let l = m.latency.unwrap_or_default();
                    println!(
                        "{:<6}{:>8}{:>7}{:>8}{:>12}{:>10.3}{:>10.2}{:>10.0}{:>12.1}{:>12.1}{:>12.0}",
                        r.kind,
                        m.point.sizes.label(),
                        m.point.cores,
                        m.point.flows,
                        m.point.plugins.label(),
                        m.pps() / 1e6,
                        m.bps() / 1e9,
                        m.cycles_per_packet(),
                        l.p50 as f64 / 1e3,
                        l.p99 as f64 / 1e3,
                        m.mem_per_flow()
                    );
                }
            }
            eprintln!(
                "flowpeek-bench sweep: {} rows → {}, {}, {}",
                rows.len(),
                csv.display(),
                js.display(),
                sv.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowpeek-bench: writing to {}: {e}", a.out_dir.display());
            ExitCode::from(1)
        }
    }
}
