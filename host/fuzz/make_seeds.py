#!/usr/bin/env python3
"""Writes the seed inputs of host/fuzz/regressions/<target>/ (seed-*; crash inputs kept as
regression tests are named crash-* and never touched here).

    python3 host/fuzz/make_seeds.py        # reads the corpus: FLOWPEEK_CORPUS, else
                                           # ../shared/corpus beside the clone

Deterministic: the same corpus gives the same files. Each target gets a few KB at most.
"""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# As scripts/lib.sh and flowpeek::testing: a relative FLOWPEEK_CORPUS is taken from the root.
CORPUS = os.path.join(ROOT, os.environ.get("FLOWPEEK_CORPUS") or os.path.join("..", "shared", "corpus"))
OUT = os.path.join(ROOT, "host", "fuzz", "regressions")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def clean():
    for target in ("decode", "capture", "engine", "shm_ring", "plugin_config", "defrag"):
        d = os.path.join(OUT, target)
        if os.path.isdir(d):
            for f in os.listdir(d):
                if f.startswith("seed-"):
                    os.remove(os.path.join(d, f))


def corpus_file(rel):
    with open(os.path.join(CORPUS, rel), "rb") as f:
        return f.read()


def pcap_packets(data):
    """(link type, frame) of every record of a legacy pcap file."""
    e = "<" if data[0] in (0xD4, 0x4D) else ">"
    link = struct.unpack(e + "I", data[20:24])[0] & 0xFFFF
    out, o = [], 24
    while o + 16 <= len(data):
        _, _, cl, _ = struct.unpack(e + "IIII", data[o : o + 16])
        o += 16
        if o + cl > len(data):
            break
        out.append((link, data[o : o + cl]))
        o += cl
    return out


def pcap(frames, link, big=False, nanos=False, snap=65535):
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snap, link)
    for i, f in enumerate(frames):
        out += struct.pack(e + "IIII", 1700000000 + i, 123456 * (i + 1), len(f), len(f) + i)
        out += f
    return out


def pcapng_block(e, btype, body):
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def pcapng(sections):
    """sections: [(big, [(link, tsresol or None)], [(interface, frame)])]"""
    out = b""
    for big, ifaces, pkts in sections:
        e = ">" if big else "<"
        out += pcapng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        for link, res in ifaces:
            opts = b""
            if res is not None:
                opts = struct.pack(e + "HH", 9, 1) + bytes([res]) + b"\0\0\0" + b"\0\0\0\0"
            out += pcapng_block(e, 1, struct.pack(e + "HHI", link, 0, 0) + opts)
        for i, (iface, f) in enumerate(pkts):
            ts = 1700000000123456 + i
            out += pcapng_block(
                e, 6, struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f)) + f
            )
        # A simple packet block (interface 0) at the end of the section.
        if pkts:
            f = pkts[0][1]
            out += pcapng_block(e, 3, struct.pack(e + "I", len(f)) + f)
    return out


# -----------------------------------------------------------------------------------------
# decode: byte 0 picks the link (0 Ethernet, 1 RawIp, 2 SLL, 3 SLL2, 4 Null), then the frame
# -----------------------------------------------------------------------------------------

ETH, RAW, SLL, SLL2, NULL = 0, 1, 2, 3, 4


def decode_seeds(eth_frames, null_frames, raw_frames, sll_frames):
    def eth_split(f):
        return f[:12], f[12:14], f[14:]

    def tcp_with(pred, frames):
        for f in frames:
            mac, et, rest = eth_split(f)
            if et == b"\x08\x00" and rest[9] == 6 and pred(rest):
                return f
        raise SystemExit("no matching frame in the corpus")

    v4_syn = tcp_with(lambda ip: ip[20 + 13] & 0x02 and (ip[20 + 12] >> 4) > 5, eth_frames)
    v4_data = tcp_with(lambda ip: len(ip) > 60 and ip[20 + 13] & 0x08, eth_frames)
    write("decode", "eth-ipv4-syn-options", bytes([ETH]) + v4_syn)
    write("decode", "eth-ipv4-data", bytes([ETH]) + v4_data[:160])
    write("decode", "eth-ipv4-truncated", bytes([ETH]) + v4_data[:70])
    mac, _, ip = eth_split(v4_data[:120])
    write("decode", "eth-vlan-ipv4", bytes([ETH]) + mac + b"\x81\x00\x00\x05\x08\x00" + ip)
    write(
        "decode",
        "eth-qinq-ipv4",
        bytes([ETH]) + mac + b"\x88\xa8\x00\x07\x81\x00\x00\x05\x08\x00" + ip,
    )
    write(
        "decode",
        "eth-mpls2-ipv4",
        bytes([ETH]) + mac + b"\x88\x47" + b"\x00\x01\x00\x40" + b"\x00\x02\x01\x40" + ip,
    )
    # An IPv4 fragment (offset 8, more fragments) of the same packet.
    frag = bytearray(ip[:40])
    frag[6:8] = b"\x20\x01"
    write("decode", "eth-ipv4-fragment", bytes([ETH]) + mac + b"\x08\x00" + bytes(frag))
    # The IPv6 segment with the most payload among the first ones.
    v6 = sorted([f for f in raw_frames if f[0] >> 4 == 6 and f[6] == 6][:20], key=len, reverse=True)
    if v6:
        write("decode", "raw-ipv6-tcp", bytes([RAW]) + v6[0][:120])
        # The same segment behind a hop-by-hop options header.
        p = v6[0][:120]
        hbh = bytes([6, 0, 1, 4, 0, 0, 0, 0])
        plen = struct.unpack(">H", p[4:6])[0] + 8
        ext = p[:4] + struct.pack(">H", plen) + b"\x00" + p[7:40] + hbh + p[40:]
        write("decode", "raw-ipv6-hopbyhop-tcp", bytes([RAW]) + ext)
        write("decode", "eth-ipv6-tcp", bytes([ETH]) + mac + b"\x86\xdd" + v6[0][:120])
    write("decode", "raw-ipv4-tcp", bytes([RAW]) + ip)
    for f in null_frames:
        if f[4] >> 4 == 4:
            write("decode", "null-ipv4", bytes([NULL]) + f[:120])
            break
    for f in null_frames:
        if f[4] >> 4 == 6:
            write("decode", "null-ipv6", bytes([NULL]) + f[:120])
            break
    write("decode", "null-be-ipv4", bytes([NULL]) + b"\x00\x00\x00\x02" + ip)
    if sll_frames:
        write("decode", "sll-ipv4", bytes([SLL]) + sll_frames[0][:120])
    # SLL2: protocol, reserved, ifindex, arphrd, packet type, addr len, 8 address bytes.
    sll2 = b"\x08\x00" + b"\0\0" + b"\0\0\0\x02" + b"\x00\x01" + b"\x00" + b"\x06" + mac[:6] + b"\0\0"
    write("decode", "sll2-ipv4", bytes([SLL2]) + sll2 + ip)
    write("decode", "eth-arp", bytes([ETH]) + mac + b"\x08\x06" + bytes(28))


# -----------------------------------------------------------------------------------------
# capture: whole (small) capture files
# -----------------------------------------------------------------------------------------


def capture_seeds(eth_frames):
    frames = [f[:96] for f in eth_frames[:3]]
    write("capture", "pcap-le-usec-eth", pcap(frames, 1, snap=96))
    write("capture", "pcap-be-nsec-eth", pcap(frames, 1, big=True, nanos=True, snap=96))
    whole = pcap(frames, 1)
    write("capture", "pcap-cut-in-a-record", whole[: len(whole) - 30])
    write(
        "capture",
        "pcapng-2-sections-2-interfaces",
        pcapng(
            [
                (False, [(1, None), (101, 9)], [(0, frames[0]), (1, frames[1][14:])]),
                (True, [(1, 0x86)], [(0, frames[2])]),
            ]
        ),
    )
    # Small real captures, whole: pcapng (Ethernet), BSD loopback, raw IPv4 (228).
    for rel, name in [
        ("public/zeek/tcp/retransmit-timeout.pcapng", "zeek-retransmit-timeout.pcapng"),
        ("public/suricata-verify/defrag/bug-6887-defrag-ipv4-tcp-syn/frag-ip-tcp-syn.pcap", "raw228-frag.pcap"),
    ]:
        write("capture", name, corpus_file(rel))
    write("capture", "not-a-capture", b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")


# -----------------------------------------------------------------------------------------
# engine: a program for fuzz_targets/engine.rs's reader
# -----------------------------------------------------------------------------------------

# Endpoints: host h (0..2 -> 10.0.0.h+1 / fd00::h+1) and port p (0 -> 80, 1 -> 1234, 2 -> 40000).
CLIENT = (0, 2)
SERVER = (1, 0)
SYN, SYNACK, PSHACK, FINACK, RST, ACK = 0, 1, 2, 6, 7, 8


class Prog:
    def __init__(self, config):
        self.b = bytearray([config])

    def seg(self, src, dst, flags, payload=0, seq=None, ack=None, v6=False, ts=0, window=None, wscale=None, raw_flags=None):
        """A segment. flags: the selector (SYN, ..., or 9 with raw_flags, the flag byte itself).
        seq: None (next), ('+', n8), ('-', n16), ('++', n16) or ('=', n32); ack: None (the
        reverse direction's next), ('~', n16: next + n - 0x8000) or ('=', n32); ts: the
        timestamp mode (0: now, 10: now + n16 * 10 us)."""
        op = 3 | (ts << 4)
        a = src[0] | (src[1] << 2) | (dst[0] << 4) | (0xC0 if v6 else 0)
        m = {None: 0, "+": 4, "-": 5, "++": 6, "=": 7}[seq[0] if seq else None]
        m |= {None: 0, "~": 2, "=": 3}[ack[0] if ack else None] << 3
        if window is not None:
            m |= 0x20
        if wscale is not None:
            m |= 0x40
        if payload == 0:
            m |= 0x80
        self.b += bytes([op, a, dst[1], m, flags])
        if flags == 9:
            self.b += bytes([raw_flags])
        if seq:
            self.b += struct.pack({"+": "<B", "-": "<H", "++": "<H", "=": "<I"}[seq[0]], seq[1])
        if ack:
            self.b += struct.pack({"~": "<H", "=": "<I"}[ack[0]], ack[1])
        if window is not None:
            self.b += struct.pack("<H", window)
        if wscale is not None:
            self.b += bytes([wscale])
        if payload:
            self.b += bytes([payload])
        if ts == 10:
            self.b += struct.pack("<H", 5000)
        return self

    def end_batch(self):
        self.b += b"\x00"
        return self

    def advance_ms(self, ms):
        self.b += b"\x01\x01" + struct.pack("<H", ms)
        return self

    def advance_s(self, s):
        self.b += b"\x01\x03" + struct.pack("<I", s * 1000)
        return self

    def raw(self, link, frame):
        self.b += bytes([2, link, len(frame)]) + frame
        return self

    def handshake(self, c=CLIENT, s=SERVER, v6=False):
        self.seg(c, s, SYN, v6=v6, wscale=7)
        self.seg(s, c, SYNACK, v6=v6, wscale=7)
        return self.seg(c, s, ACK, v6=v6).end_batch()

    def close(self, c=CLIENT, s=SERVER, v6=False):
        self.seg(c, s, FINACK, v6=v6).seg(s, c, FINACK, v6=v6).seg(c, s, ACK, v6=v6)
        return self.end_batch()


def engine_seeds(eth_frames):
    c, s = CLIENT, SERVER
    p = Prog(0).handshake()
    p.seg(c, s, PSHACK, 120).seg(s, c, PSHACK, 200).seg(s, c, PSHACK, 200).end_batch()
    write("engine", "http-like-close", p.close().b)

    # Out of order, a hole filled later, a retransmission and an overlap.
    p = Prog(4).handshake()
    p.seg(c, s, PSHACK, 100, seq=("+", 50)).end_batch()
    p.seg(c, s, PSHACK, 50, seq=("-", 150)).end_batch()
    p.seg(c, s, PSHACK, 80, seq=("-", 40)).seg(c, s, PSHACK, 100).end_batch()
    write("engine", "reorder-overlap-last", p.close().b)

    # More data than the 512-byte buffer holds without reading; a lost segment the
    # receiver's ACK covers (gap skipped).
    p = Prog(1).handshake()
    for _ in range(4):
        p.seg(c, s, PSHACK, 200)
    p.seg(c, s, PSHACK, 200, seq=("++", 400)).seg(s, c, ACK, ack=("~", 0x8000)).end_batch()
    write("engine", "buffer-full-and-gap", p.close().b)

    # RST in the middle; a SYN-less (midstream) flow; idle timeout; TIME_WAIT timer.
    p = Prog(2).handshake().seg(c, s, PSHACK, 30).seg(s, c, RST).end_batch()
    p.seg((2, 1), s, PSHACK, 40, seq=("=", 0x10000)).end_batch()
    p.advance_s(5).end_batch()
    p.handshake(c=(2, 2)).close(c=(2, 2)).advance_ms(700).advance_s(4).end_batch()
    write("engine", "rst-midstream-timeouts", p.b)

    # Five flows on a 4-flow table (eviction), one of them IPv6; windows and odd flags.
    p = Prog(8)
    for i in range(5):
        p.handshake(c=(i % 3, 1 + i // 3), s=((i + 1) % 3, 0), v6=(i == 4))
    p.seg((0, 1), (1, 0), PSHACK, 60, window=0, ts=10)
    p.seg((0, 1), (1, 0), 9, 10, raw_flags=0x2B)  # SYN|FIN|PSH|URG
    write("engine", "eviction-ipv6-odd-flags", p.b)

    # Raw frames: a real Ethernet TCP frame and an IPv6 one given as raw IP.
    p = Prog(3)
    for f in eth_frames[:3]:
        p.raw(0, f[:200])
    p.end_batch()
    write("engine", "raw-frames", p.b)


# -----------------------------------------------------------------------------------------
# shm_ring: byte 0 = mode (bits 0..1), host rings (bits 2..3), pre-validation patches
# (bits 4..7 mod 9) or truncation (0xe0 with mode 3); then 6-byte patches (u16 offset, u32)
# -----------------------------------------------------------------------------------------


def patch(off, value):
    return struct.pack("<HI", off, value)


def shm_seeds():
    write("shm_ring", "valid-walk", bytes([0x00]))
    write("shm_ring", "valid-walk-legacy", bytes([0x04]))
    write("shm_ring", "valid-walk-auto", bytes([0x08]))
    # Offsets with bits 14..15 set land in the 8 KiB after the shm header.
    hot = lambda o: 0xC000 | o
    pre = b"".join(patch(hot(o), v) for o, v in [(0x18, 3), (0x40, 0xFFFF), (0x108, 0x7FFF)])
    during = b"".join(patch(hot(o), v) for o, v in [(0x100, 7), (0x104, 9), (0x180, 0xFFFFFFFF), (0x200, 4096)])
    write("shm_ring", "patched-before-and-during", bytes([0x31]) + pre + during)
    write("shm_ring", "patched-during-only", bytes([0x01]) + during + during)
    write("shm_ring", "raw-image", bytes([0x02]) + struct.pack("<I", 64) + bytes(range(256)) * 2)
    write("shm_ring", "open-path-patched", bytes([0x03]) + pre)
    write("shm_ring", "open-path-header", bytes([0x03]) + patch(8, 2) + patch(0x30, 1 << 20))
    write("shm_ring", "open-path-truncated", bytes([0xE3, 0x21]) + bytes(5))


# -----------------------------------------------------------------------------------------
# plugin_config: byte 0 (bit 0 clear: httplog; else (b >> 1) % 5: 1 streamhash, 2 midstat,
# 3 eventlog, 4 noop; b >> 3: client segment size / 50), config text, 0x00, client payload
# (the server sends the payload reversed)
# -----------------------------------------------------------------------------------------


def plugin_seeds():
    def put(name, pick, config, payload):
        write("plugin_config", name, bytes([pick]) + config + b"\0" + payload)

    req = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    post = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    # The server's answer is the payload reversed: a request followed by a reversed response
    # makes the server send the response first.
    put("httplog-get-200", 0x00, b"buffer = 65536\nmax_header = 16384\n", req + resp[::-1])
    put("httplog-pipelined-chunked", 0x40, b"max_pending = 2\n", req + post + req + chunked[::-1])
    put("httplog-small-limits", 0x08, b"buffer = 64 # tiny\nmax_header = 1_6\nmax_pending = 1\n", req + resp[::-1])
    put("httplog-bad-config", 0x00, b"buffer = lots\n", req)
    put("httplog-head-304", 0x10, b"", b"HEAD / HTTP/1.0\r\n\r\n" + b"HTTP/1.0 304 Not Modified\r\n\r\n"[::-1])
    put("streamhash", 0x03, b"buffer = 4096\n", req + resp[::-1])
    put("midstat", 0x05, b"max_rows = 1\ninterval_ms = 0\n", req)
    put("eventlog", 0x07, b"", req)
    put("noop", 0x09, b"", b"x")


def defrag_seeds():
    """Programs for fuzz_targets/defrag.rs: a setup byte (policy, memory, fragments and
    datagram bounds), then ops: a fragment (kind 0/1: v6, id, MF, TCP and length-in-8s bits,
    a 16-bit offset in 8-byte units, a length byte and a fill byte), a time jump (kind 2) or a
    raw frame (kind 3: a length byte and the bytes)."""

    def frag(v6=False, id=0, more=True, tcp=False, off8=0, len8=1, fill=0x41, raw_len=None):
        op = int(v6) | (id << 1) | (int(more) << 3) | (int(tcp) << 4)
        if raw_len is None:
            op |= 0x20
            n = len8
        else:
            n = raw_len
        return bytes([op]) + struct.pack(">H", off8) + bytes([n, fill])

    def jump(two_s):
        return bytes([0x80 | two_s])

    def setup(policy=0, memory=3, frags=2, datagrams=1):
        return bytes([policy | (memory << 3) | (frags << 5) | (datagrams << 7)])

    three = frag(off8=0) + frag(off8=1) + frag(off8=2, more=False)
    write("defrag", "v4-in-order", setup() + three)
    write("defrag", "v6-reversed", setup() + frag(True, off8=2, more=False) + frag(True, off8=1) + frag(True, off8=0))
    novak = [(0, 3, "A"), (4, 2, "B"), (6, 3, "C"), (10, 1, "D"), (13, 2, "E"), (15, 3, "F"),
             (18, 2, "G"), (20, 2, "H"), (22, 1, "I"), (1, 4, "J"), (6, 3, "K"), (9, 3, "L"),
             (12, 3, "M"), (16, 1, "N"), (19, 1, "O"), (20, 1, "P"), (22, 2, "Q")]
    for policy in range(6):
        ops = b"".join(
            frag(off8=o, len8=n, fill=ord(c), more=i + 1 < len(novak)) for i, (o, n, c) in enumerate(novak)
        )
        write("defrag", f"novak-policy-{policy}", setup(policy=policy) + ops)
    write("defrag", "timeout-then-rest", setup() + frag(off8=0) + jump(0x3f) + frag(off8=1, more=False))
    write("defrag", "tiny-and-zero", setup() + frag(tcp=True, raw_len=16) + frag(off8=3, raw_len=0) + frag(off8=1, len8=1, tcp=True))
    write("defrag", "flood-small-cap", setup(memory=0, datagrams=0) + b"".join(frag(id=i % 4, off8=i, len8=40) for i in range(12)))
    write("defrag", "too-many-fragments", setup(frags=0) + b"".join(frag(off8=i) for i in range(5)))
    write("defrag", "raw-frames", setup() + bytes([0xc0, 6]) + b"\x45\x00\x00\x14\x00\x01" + bytes([0xc0, 0]))


def main():
    if not os.path.isdir(CORPUS):
        sys.exit(f"make_seeds: no capture corpus at {CORPUS}: clone beside ../shared or set FLOWPEEK_CORPUS")
    clean()
    eth, null, raw, sll = [], [], [], []
    for rel in [
        "public/suricata-verify/tcp-urgp-01-oob/tcp-urgent1.pcap",
        "public/suricata-verify/issue-7847-01/xor_packet_test.pcap",
        "public/suricata-verify/tcp-fastopen-11-reject-syn-data/tlpw-tcp-tfo-data-on-syn-nack.pcap",
        "public/suricata-verify/smb-eicar-overlap/input.pcap",
        "public/suricata-verify/http-ipv6/input.pcap",
    ]:
        for link, f in pcap_packets(corpus_file(rel)):
            {1: eth, 0: null, 101: raw, 113: sll}.get(link, []).append(f)
    # IPv6 frames from Ethernet captures count as raw IPv6 too.
    raw += [f[14:] for f in eth if f[12:14] == b"\x86\xdd"]
    raw += [f[4:] for f in null if f[4] >> 4 == 6]
    eth = [f for f in eth if f[12:14] == b"\x08\x00"]
    decode_seeds(eth, null, raw, sll)
    capture_seeds(eth)
    engine_seeds(eth)
    shm_seeds()
    plugin_seeds()
    defrag_seeds()
    for t in sorted(os.listdir(OUT)):
        d = os.path.join(OUT, t)
        if os.path.isdir(d):
            n = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
            print(f"{t}: {len(os.listdir(d))} files, {n} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
