//! `flowpeek-bench sweep --tiny` runs generator and consumer processes and writes a CSV with
//! one row per point and an SVG plot.

use std::path::Path;
use std::process::Command;

#[test]
fn tiny_sweep_writes_csv_json_and_svg() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The sweep starts the binaries of one directory: build them there (debug, quick).
    let target = ws.join("target/bench-tests");
    let out = Command::new(env!("CARGO"))
        .current_dir(ws)
        .args([
            "build",
            "--quiet",
            "-p",
            "flowpeek",
            "-p",
            "flowpeek-bench",
            "-p",
            "flowpeek-plugin-noop",
            "--target-dir",
        ])
        .arg(&target)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target.join("debug");
    let dir = std::env::temp_dir().join(format!("flowpeek-sweep-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = std::time::Instant::now();
    let out = Command::new(bin.join("flowpeek-bench"))
        .args(["sweep", "--tiny", "--quiet", "--out-dir"])
        .arg(&dir)
        .arg("--bin-dir")
        .arg(&bin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("tiny sweep in {:.1} s", started.elapsed().as_secs_f64());
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], flowpeek_bench::sweep::CSV_HEADER);
    // 2 sizes × 1 flows × 1 cores × 1 plugins, then 1 load point.
    assert_eq!(lines.len(), 1 + 3, "{csv}");
    let cols = lines[0].split(',').count();
    for (i, l) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), cols, "{l}");
        assert_eq!(f[0], if i < 2 { "grid" } else { "load" });
        let packets: u64 = f[8].parse().unwrap();
        assert!(packets > 0, "{l}");
        let samples: u64 = f[17].parse().unwrap();
        assert!(samples > 0, "latency sampled: {l}");
    }
    assert_eq!(lines[1].split(',').nth(1), Some("64"));
    assert_eq!(lines[2].split(',').nth(1), Some("1514"));
    let svg = std::fs::read_to_string(dir.join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("100 GbE line rate"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn line_rate_reference_points() {
    use flowpeek_bench::sweep::line_rate_mpps;
    assert!((line_rate_mpps(10.0, 64.0) - 14.88).abs() < 0.01);
    assert!((line_rate_mpps(40.0, 64.0) - 59.52).abs() < 0.01);
    assert!((line_rate_mpps(100.0, 64.0) - 148.81).abs() < 0.01);
}
