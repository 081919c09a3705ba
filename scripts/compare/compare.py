#!/usr/bin/env python3
"""Reads the per-capture outputs and timings that run.sh left in OUT and prints a
markdown table; writes OUT/results.json.

Usage: compare.py OUT   (OUT/timings.tsv lists capture, tool, wall, user, sys, rss KiB,
packets, bytes, note; OUT/<capture>/ holds each tool's output)

Agreement: each direction of each connection in `flowpeek streams --json` (the reference)
is matched with a direction of the same SRC:PORT>DST:PORT in the tool's output with the
same byte count (each tool direction used once; a 4-tuple reused by several connections is
matched as a multiset). Where the tool gives a CRC-32 (or its bytes), the CRC must match
too for the second figure. For tshark following only some streams, the reference is
restricted to the 4-tuples tshark reported and the total is the directions tshark gave.
"""
import json
import os
import re
import sys
import zlib
from collections import defaultdict


def norm_ep(ep):
    """'198.018.000.001.00080' (tcpflow) or '1.2.3.4:80' -> '1.2.3.4:80'."""
    if ":" in ep and ep.count(".") == 3:
        return ep
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\.(\d+)\.(\d+)", ep)
    if m:
        a, b, c, d, p = (int(x) for x in m.groups())
        return f"{a}.{b}.{c}.{d}:{p}"
    return ep


def read_streams_jsonl(path):
    out = []
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        x = json.loads(line)
        c, s = x["client"], x["server"]
        out.append((f"{c}>{s}", x["c2s"]["bytes"], x["c2s"]["crc32"]))
        out.append((f"{s}>{c}", x["s2c"]["bytes"], x["s2c"]["crc32"]))
    return out


def read_lines(path):
    """SRC:PORT>DST:PORT BYTES CRC32 (libnids, gopacket programs)."""
    out = []
    for line in open(path):
        f = line.split()
        if len(f) == 3:
            out.append((f[0], int(f[1]), f[2]))
    return out


def read_tcpflow(outdir):
    """tcpflow's report.xml: one fileobject per direction; CRC from the file if written."""
    out = []
    report = os.path.join(outdir, "report.xml")
    text = open(report, errors="replace").read()
    for obj in re.findall(r"<fileobject>(.*?)</fileobject>", text, re.S):
        m = re.search(r"<tcpflow [^>]*src_ipn='([^']*)' dst_ipn='([^']*)' srcport='(\d+)' dstport='(\d+)'", obj)
        if not m:
            continue
        key = f"{m.group(1)}:{m.group(3)}>{m.group(2)}:{m.group(4)}"
        size = int(re.search(r"<filesize>(\d+)</filesize>", obj).group(1))
        fn = re.search(r"<filename>(.*?)</filename>", obj)
        crc = None
        if fn:
            path = fn.group(1)
            if not os.path.isabs(path):
                path = os.path.join(os.path.dirname(outdir), path)
            try:
                with open(path, "rb") as f:
                    crc = "%08x" % (zlib.crc32(f.read()) & 0xFFFFFFFF)
            except OSError:
                crc = None
        elif size == 0:
            crc = "00000000"
        out.append((key, size, crc))
    return out


def read_tshark(path):
    """tshark -q -z follow,tcp,raw,N ...: Node 0 sends the unindented hex lines."""
    out = []
    block = None

    def flush(b):
        if b and b["n0"] and b["n1"]:
            for src, dst, data in ((b["n0"], b["n1"], b["d0"]), (b["n1"], b["n0"], b["d1"])):
                raw = bytes.fromhex("".join(data))
                out.append((f"{src}>{dst}", len(raw), "%08x" % (zlib.crc32(raw) & 0xFFFFFFFF)))

    for line in open(path):
        if line.startswith("====="):
            flush(block)
            block = None
            continue
        if line.startswith("Follow: tcp"):
            block = {"n0": None, "n1": None, "d0": [], "d1": []}
            continue
        if block is None:
            continue
        if line.startswith("Node 0: "):
            block["n0"] = line[8:].strip()
        elif line.startswith("Node 1: "):
            block["n1"] = line[8:].strip()
        elif line.startswith("Filter:"):
            continue
        elif line.startswith("\t"):
            block["d1"].append(line.strip())
        elif line.strip():
            block["d0"].append(line.strip())
    flush(block)
    return out


def agree(ref, got, restrict=False):
    if restrict:
        keys = {k for k, _, _ in got}
        ref = [r for r in ref if r[0] in keys]
    by_bytes = defaultdict(list)
    by_crc = defaultdict(list)
    for k, b, c in got:
        by_bytes[(k, b)].append(1)
        by_crc[(k, b, c)].append(1)
    nb = nc = 0
    for k, b, c in ref:
        if by_bytes.get((k, b)):
            by_bytes[(k, b)].pop()
            nb += 1
        if by_crc.get((k, b, c)):
            by_crc[(k, b, c)].pop()
            nc += 1
    # Restricted (tshark on some streams): a 4-tuple reused by other connections keeps
    # all of them in ref, so count against what the tool reported.
    return nb, nc, (min(len(ref), len(got)) if restrict else len(ref))


def main():
    out = sys.argv[1]
    rows = []
    for line in open(os.path.join(out, "timings.tsv")):
        f = line.rstrip("\n").split("\t")
        if len(f) < 9 or f[0] == "capture":
            continue
        rows.append(dict(capture=f[0], tool=f[1], wall_s=float(f[2]), user_s=float(f[3]),
                         sys_s=float(f[4]), peak_rss_kib=int(f[5]), packets=int(f[6]),
                         capture_bytes=int(f[7]), note=f[8]))
    refs = {}
    for r in rows:
        d = os.path.join(out, r["capture"])
        if r["capture"] not in refs:
            refs[r["capture"]] = read_streams_jsonl(os.path.join(d, "reference.jsonl"))
        ref = refs[r["capture"]]
        tool = r["tool"]
        restrict = False
        if tool == "flowpeek-streams":
            got = read_streams_jsonl(os.path.join(d, "flowpeek-streams.out"))
        elif tool == "flowpeek-streams-crc32":
            got = read_streams_jsonl(os.path.join(d, "flowpeek-streams-crc.out"))
        elif tool == "flowpeek-run-streamhash":
            got = read_streams_jsonl(os.path.join(d, "streamhash.jsonl"))
        elif tool in ("libnids", "gopacket"):
            got = read_lines(os.path.join(d, tool + ".out"))
        elif tool == "tcpflow":
            got = read_tcpflow(os.path.join(d, "tcpflow"))
        elif tool == "tshark":
            got = read_tshark(os.path.join(d, "tshark.out"))
            restrict = "first" in r["note"]
        else:
            continue
        nb, nc, total = agree(ref, got, restrict)
        r.update(tool_directions=len(got), reference_directions=total,
                 bytes_agree=nb, bytes_and_crc_agree=nc,
                 pps=(r["packets"] / r["wall_s"] if r["wall_s"] > 0 else 0.0))
    # Speed ratios: flowpeek streams against each other tool on the same capture.
    for r in rows:
        fp = [x for x in rows if x["capture"] == r["capture"] and x["tool"] == "flowpeek-streams"]
        r["flowpeek_streams_speedup"] = (r["wall_s"] / fp[0]["wall_s"]) if fp and fp[0]["wall_s"] > 0 else None
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"runs": rows}, f, indent=1)

    print("| capture | packets | tool | wall s (best) | user s | sys s | kpkt/s | peak RSS MiB | bytes agree | bytes+CRC agree | tool/flowpeek time | note |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        sp = r["flowpeek_streams_speedup"]
        print("| %s | %d | %s | %.3f | %.2f | %.2f | %.1f | %.1f | %d/%d | %d/%d | %s | %s |" % (
            r["capture"], r["packets"], r["tool"], r["wall_s"], r["user_s"], r["sys_s"],
            r["pps"] / 1e3, r["peak_rss_kib"] / 1024, r["bytes_agree"], r["reference_directions"],
            r["bytes_and_crc_agree"], r["reference_directions"],
            ("%.1fx" % sp) if sp is not None else "-", r["note"]))
    # The targets.
    print()
    for cap in sorted({r["capture"] for r in rows}):
        get = {r["tool"]: r for r in rows if r["capture"] == cap}
        for label, key in (("flowpeek streams (SHA-256 + CRC-32)", "flowpeek-streams"),
                           ("flowpeek streams --no-sha256 (CRC-32, as the others)",
                            "flowpeek-streams-crc32")):
            fp = get.get(key)
            for tool, target in (("libnids", 5.0), ("gopacket", 3.0)):
                if fp and tool in get:
                    ratio = get[tool]["wall_s"] / fp["wall_s"] if fp["wall_s"] > 0 else 0
                    print("- %s: %s is %.1fx %s (target %.0fx): %s" % (
                        cap, label, ratio, tool, target, "met" if ratio >= target else "NOT met"))
        run = get.get("flowpeek-run-streamhash")
        for tool, target in (("libnids", 5.0), ("gopacket", 3.0)):
            if run and tool in get:
                ratio = get[tool]["wall_s"] / run["wall_s"] if run["wall_s"] > 0 else 0
                print("- %s: flowpeek run+streamhash is %.1fx %s (target %.0fx): %s" % (
                    cap, ratio, tool, target, "met" if ratio >= target else "NOT met"))


if __name__ == "__main__":
    main()
