//! The traffic generator: TCP connections the way pkt-gen builds packets.
//!
//! One frame template is built once; per packet only the fields that change are written
//! (addresses and ports of the flow, sequence and acknowledgement numbers, flags, lengths,
//! the IPv4 checksum, and the TCP checksum when asked). Payload bytes are a function of the
//! connection's seed and the stream offset, so a receiver can recompute what each direction
//! carried ([`Generator::expected`]). Loss, reordering and retransmission never change the
//! stream a receiver reassembles: a "lost" segment is sent again later, as TCP would.

use sha2::{Digest, Sha256};

/// Ethernet + IPv4 + TCP headers (no options).
pub const HEADERS: usize = 14 + 20 + 20;
const BLOCK: usize = 1 << 16;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Concurrent connections.
    pub flows: u32,
    /// Frame sizes to cycle through (64..=1514); IMIX is `[64; 7] + [576; 4] + [1500]`.
    pub sizes: Vec<usize>,
    /// Data segments per connection before it closes; 0: connections never close and
    /// start mid-stream (no handshake).
    pub conn_packets: u32,
    /// Seed of everything.
    pub seed: u64,
    /// Probability that a data segment is lost (and sent again a few packets later).
    pub loss: f64,
    /// Probability that a data segment is delayed behind the next one.
    pub reorder: f64,
    /// Probability that a data segment is also sent a second time.
    pub retransmit: f64,
    /// Fill in TCP checksums (IPv4 header checksums are always right).
    pub checksums: bool,
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            flows: 1000,
            sizes: vec![64],
            conn_packets: 16,
            seed: 1,
            loss: 0.0,
            reorder: 0.0,
            retransmit: 0.0,
            checksums: false,
        }
    }
}

/// The IMIX frame size mix.
pub fn imix() -> Vec<usize> {
    let mut v = vec![64; 7];
    v.extend([576; 4]);
    v.push(1500);
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Syn,
    SynAck,
    Ack,
    Data(u32),
    FinC,
    FinS,
    LastAck,
}

#[derive(Clone, Debug)]
struct Flow {
    index: u32,
    conn: u32,
    phase: Phase,
    /// Next sequence number of the client and the server.
    cseq: u32,
    sseq: u32,
    /// Bytes sent so far in each direction.
    c_off: u64,
    s_off: u64,
}

/// A packet kept back (loss, reordering), to send later.
#[derive(Clone, Copy)]
struct Held {
    flow: u32,
    conn: u32,
    from_client: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    off: u64,
    len: usize,
    due: u64,
    /// The receiver has not got it yet (lost or delayed): its ACKs must not cover it.
    missing: bool,
}

/// One connection as the generator sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// Client address and port.
    pub client: std::net::SocketAddrV4,
    /// Server address and port.
    pub server: std::net::SocketAddrV4,
    /// Client→server bytes.
    pub c2s: u64,
    /// Server→client bytes.
    pub s2c: u64,
    /// The connection's seed (for [`Generator::expected`]).
    pub seed: u64,
}

/// The generator.
pub struct Generator {
    cfg: GenConfig,
    flows: Vec<Flow>,
    next_flow: usize,
    block: Vec<u8>,
    held: Vec<Held>,
    rng: u64,
    emitted: u64,
    size_i: usize,
    /// Connections that completed (with a FIN handshake), for verification.
    pub finished: Vec<ConnRecord>,
    /// Keep finished connection records (off for long runs).
    pub record: bool,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Generator {
    /// A generator for `cfg`.
    pub fn new(cfg: GenConfig) -> Generator {
        let mut s = cfg.seed;
        let block = (0..BLOCK).map(|_| splitmix(&mut s) as u8).collect();
        let mut g = Generator {
            flows: Vec::with_capacity(cfg.flows as usize),
            next_flow: 0,
            block,
            held: Vec::with_capacity(64),
            rng: cfg.seed ^ 0x5eed,
            emitted: 0,
            size_i: 0,
            finished: Vec::new(),
            record: false,
            cfg,
        };
        for i in 0..g.cfg.flows.max(1) {
            let f = g.fresh(i, 0);
            g.flows.push(f);
        }
        g
    }

    fn fresh(&self, index: u32, conn: u32) -> Flow {
        let seed = self.conn_seed(index, conn);
        Flow {
            index,
            conn,
            phase: if self.cfg.conn_packets == 0 {
                Phase::Data(0)
            } else {
                Phase::Syn
            },
            cseq: seed as u32,
            sseq: (seed >> 32) as u32,
            c_off: 0,
            s_off: 0,
        }
    }

    fn conn_seed(&self, index: u32, conn: u32) -> u64 {
        let mut s =
            self.cfg.seed ^ (u64::from(index) << 32) ^ u64::from(conn).wrapping_mul(0x1000_0001);
        splitmix(&mut s)
    }

    /// The endpoints of connection `conn` of flow `index`: the client's port changes with
    /// each connection so that a new one never looks like the old one.
    pub fn endpoints(index: u32, conn: u32) -> (std::net::SocketAddrV4, std::net::SocketAddrV4) {
        let c = 0x0a00_0000 | (index & 0x00ff_ffff);
        let s = 0xac10_0000 | (index % 64);
        let cport = 1024 + ((index.wrapping_mul(7) + conn.wrapping_mul(7919)) % 64000) as u16;
        (
            std::net::SocketAddrV4::new(c.into(), cport),
            std::net::SocketAddrV4::new(s.into(), 80 + (index % 4) as u16),
        )
    }

    /// The bytes direction `from_client` of a connection carries from `off`.
    fn payload_byte_index(seed: u64, from_client: bool, off: u64) -> usize {
        let base = if from_client {
            seed
        } else {
            seed.rotate_left(17)
        };
        ((base.wrapping_add(off)) % BLOCK as u64) as usize
    }

    /// SHA-256 of the first `len` bytes of a direction of the connection with `seed`.
    pub fn expected(&self, seed: u64, from_client: bool, len: u64) -> String {
        let mut h = Sha256::new();
        let mut off = 0u64;
        while off < len {
            let i = Self::payload_byte_index(seed, from_client, off);
            let n = ((BLOCK - i) as u64).min(len - off) as usize;
            h.update(&self.block[i..i + n]);
            off += n as u64;
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (splitmix(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn next_size(&mut self) -> usize {
        let s = self.cfg.sizes[self.size_i % self.cfg.sizes.len()];
        self.size_i += 1;
        s.clamp(HEADERS, 1514)
    }

    /// Writes the next frame into `out` (at least 1514 bytes) and returns its length.
    pub fn next(&mut self, out: &mut [u8]) -> usize {
        self.emitted += 1;
        // A held packet that is due goes first.
        if let Some(i) = self.held.iter().position(|h| h.due <= self.emitted) {
            let h = self.held.swap_remove(i);
            return self.write(out, &h);
        }
        let i = self.next_flow;
        self.next_flow = (self.next_flow + 1) % self.flows.len();
        let f = self.flows[i].clone();
        // A connection does not close while some of its data is still on the way.
        if f.phase == Phase::FinC {
            if let Some(h) = self
                .held
                .iter()
                .position(|h| h.flow == f.index && h.conn == f.conn)
            {
                let h = self.held.swap_remove(h);
                return self.write(out, &h);
            }
        }
        let size = self.next_size();
        let seed = self.conn_seed(f.index, f.conn);
        const FIN: u8 = 0x01;
        const SYN: u8 = 0x02;
        const PSH: u8 = 0x08;
        const ACK: u8 = 0x10;
        let mk = |from_client: bool, flags: u8, seq: u32, ack: u32, off: u64, len: usize| Held {
            flow: f.index,
            conn: f.conn,
            from_client,
            flags,
            seq,
            ack,
            off,
            len,
            due: 0,
            missing: false,
        };
        let (pkt, next) = match f.phase {
            Phase::Syn => (
                mk(true, SYN, f.cseq, 0, 0, 0),
                Flow {
                    cseq: f.cseq.wrapping_add(1),
                    phase: Phase::SynAck,
                    ..f
                },
            ),
            Phase::SynAck => (
                mk(false, SYN | ACK, f.sseq, f.cseq, 0, 0),
                Flow {
                    sseq: f.sseq.wrapping_add(1),
                    phase: Phase::Ack,
                    ..f
                },
            ),
            Phase::Ack => (
                mk(true, ACK, f.cseq, f.sseq, 0, 0),
                Flow {
                    phase: Phase::Data(0),
                    ..f
                },
            ),
            Phase::Data(k) => {
                // One request for three responses.
                let from_client = k % 4 == 0;
                let len = size - HEADERS;
                let (seq, ack, off) = if from_client {
                    (f.cseq, self.acked(&f, true, f.sseq), f.c_off)
                } else {
                    (f.sseq, self.acked(&f, false, f.cseq), f.s_off)
                };
                let pkt = mk(from_client, PSH | ACK, seq, ack, off, len);
                let mut n = f.clone();
                if from_client {
                    n.cseq = n.cseq.wrapping_add(len as u32);
                    n.c_off += len as u64;
                } else {
                    n.sseq = n.sseq.wrapping_add(len as u32);
                    n.s_off += len as u64;
                }
                let last = self.cfg.conn_packets > 0 && k + 1 >= self.cfg.conn_packets;
                n.phase = if last {
                    Phase::FinC
                } else {
                    Phase::Data(k + 1)
                };
                (pkt, n)
            }
            Phase::FinC => (
                mk(true, FIN | ACK, f.cseq, f.sseq, 0, 0),
                Flow {
                    phase: Phase::FinS,
                    ..f
                },
            ),
            Phase::FinS => (
                mk(
                    false,
                    FIN | ACK,
                    f.sseq,
                    self.acked(&f, false, f.cseq.wrapping_add(1)),
                    0,
                    0,
                ),
                Flow {
                    phase: Phase::LastAck,
                    ..f
                },
            ),
            Phase::LastAck => {
                if self.record {
                    let (client, server) = Self::endpoints(f.index, f.conn);
                    self.finished.push(ConnRecord {
                        client,
                        server,
                        c2s: f.c_off,
                        s2c: f.s_off,
                        seed,
                    });
                }
                let pkt = mk(
                    true,
                    ACK,
                    f.cseq.wrapping_add(1),
                    f.sseq.wrapping_add(1),
                    0,
                    0,
                );
                (pkt, self.fresh(f.index, f.conn + 1))
            }
        };
        self.flows[i] = next;
        if pkt.len > 0 {
            if self.chance(self.cfg.loss) {
                // Lost on the way: the sender's retransmission is what gets through.
                let later = 2 + self.flows.len().min(8) as u64;
                self.held.push(Held {
                    due: self.emitted + later,
                    missing: true,
                    ..pkt
                });
                return self.next(out);
            }
            if self.chance(self.cfg.reorder) {
                self.held.push(Held {
                    due: self.emitted + 1,
                    missing: true,
                    ..pkt
                });
                return self.next(out);
            }
            if self.chance(self.cfg.retransmit) {
                self.held.push(Held {
                    due: self.emitted + 3,
                    ..pkt
                });
            }
        }
        self.write(out, &pkt)
    }

    /// What the side (`from_client`) acknowledges: the peer's next sequence number, but not
    /// beyond a segment of the peer's that has not arrived yet.
    fn acked(&self, f: &Flow, from_client: bool, peer_next: u32) -> u32 {
        self.held
            .iter()
            .filter(|h| {
                h.missing && h.flow == f.index && h.conn == f.conn && h.from_client != from_client
            })
            .map(|h| h.seq)
            .max_by_key(|&seq| peer_next.wrapping_sub(seq))
            .map_or(peer_next, |seq| seq)
    }

    fn write(&self, out: &mut [u8], p: &Held) -> usize {
        let (client, server) = Self::endpoints(p.flow, p.conn);
        let (src, dst) = if p.from_client {
            (client, server)
        } else {
            (server, client)
        };
        let total = HEADERS + p.len;
        let f = &mut out[..total];
        // Ethernet.
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, if p.from_client { 2 } else { 1 }]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, if p.from_client { 1 } else { 2 }]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        // IPv4.
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&((20 + 20 + p.len) as u16).to_be_bytes());
        ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
        ip[8] = 64;
        ip[9] = 6;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&src.ip().octets());
        ip[16..20].copy_from_slice(&dst.ip().octets());
        let c = checksum(0, ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        // TCP.
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
        tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&p.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&p.ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = p.flags;
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        tcp[16..20].copy_from_slice(&[0, 0, 0, 0]);
        // Payload.
        let seed = self.conn_seed(p.flow, p.conn);
        let mut off = p.off;
        let mut at = HEADERS;
        while at < total {
            let i = Self::payload_byte_index(seed, p.from_client, off);
            let n = (BLOCK - i).min(total - at);
            f[at..at + n].copy_from_slice(&self.block[i..i + n]);
            at += n;
            off += n as u64;
        }
        if self.cfg.checksums {
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&src.ip().octets());
            pseudo[4..8].copy_from_slice(&dst.ip().octets());
            pseudo[9] = 6;
            pseudo[10..12].copy_from_slice(&((20 + p.len) as u16).to_be_bytes());
            let sum = checksum(sum16(0, &pseudo), &f[34..total]);
            f[50..52].copy_from_slice(&sum.to_be_bytes());
        }
        total
    }
}

fn sum16(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn checksum(acc: u32, bytes: &[u8]) -> u16 {
    let mut s = sum16(acc, bytes);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}
