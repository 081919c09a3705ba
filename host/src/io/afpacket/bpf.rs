//! The classic BPF program of [`super::FanoutMode::Symmetric`] and the tiny assembler that
//! builds it. The program computes [`crate::io::shard::fanout_hash`]: the unit tests run it
//! in an interpreter and compare, packet by packet, and check that both directions agree.
//!
//! Must not: load outside the network and transport headers (the kernel returns 0 for a load
//! past the packet, which the tests model).

/// The classic BPF program of [`super::FanoutMode::Symmetric`]: returns a hash of the packet's
/// addresses and transport ports that is the same for both directions of a flow (the
/// kernel picks socket `hash % members`).
///
/// All loads are relative to the network header (`SKF_NET_OFF`) and the protocol comes from
/// the `skb` (`SKF_AD_PROTOCOL`), because the kernel runs fanout programs on incoming frames
/// with the link header already pulled and on outgoing ones with it in place.
pub fn symmetric_fanout_program() -> Vec<libc::sock_filter> {
    let mut a = Asm::default();
    // A = ethertype.
    a.stmt(LD | W | ABS, AD_PROTOCOL);
    a.jeq(0x0800, "v4", "not_v4");
    a.label("not_v4");
    a.jeq(0x86dd, "v6", "other");

    // IPv4: A = saddr + daddr.
    a.label("v4");
    a.stmt(LD | W | ABS, NET + 12);
    a.stmt(MISC | TAX, 0);
    a.stmt(LD | W | ABS, NET + 16);
    a.stmt(ALU | ADD | X, 0);
    a.stmt(ST, 0);
    // Fragments (MF or offset): addresses only.
    a.stmt(LD | H | ABS, NET + 6);
    a.jset(0x3fff, "addr_only", "v4_proto");
    a.label("v4_proto");
    a.stmt(LD | B | ABS, NET + 9);
    a.jeq(6, "v4_ports", "v4_udp");
    a.label("v4_udp");
    a.jeq(17, "v4_ports", "v4_sctp");
    a.label("v4_sctp");
    a.jeq(132, "v4_ports", "addr_only");
    a.label("v4_ports");
    // X = IHL * 4.
    a.stmt(LD | B | ABS, NET);
    a.stmt(ALU | AND | K, 0x0f);
    a.stmt(ALU | LSH | K, 2);
    a.stmt(MISC | TAX, 0);
    a.stmt(LD | H | IND, NET);
    a.stmt(ST, 1);
    a.stmt(LD | H | IND, NET + 2);
    a.jmp("add_ports");

    // IPv6: A = sum of the eight address words.
    a.label("v6");
    a.stmt(LD | W | ABS, NET + 8);
    for word in 1..8 {
        a.stmt(MISC | TAX, 0);
        a.stmt(LD | W | ABS, NET + 8 + 4 * word);
        a.stmt(ALU | ADD | X, 0);
    }
    a.stmt(ST, 0);
    a.stmt(LD | B | ABS, NET + 6);
    a.jeq(6, "v6_ports", "v6_udp");
    a.label("v6_udp");
    a.jeq(17, "v6_ports", "v6_sctp");
    a.label("v6_sctp");
    a.jeq(132, "v6_ports", "addr_only");
    a.label("v6_ports");
    a.stmt(LD | H | ABS, NET + 40);
    a.stmt(ST, 1);
    a.stmt(LD | H | ABS, NET + 42);
    a.jmp("add_ports");

    // A = M[0] + M[1] + A.
    a.label("add_ports");
    a.stmt(LDX | MEM, 1);
    a.stmt(ALU | ADD | X, 0);
    a.stmt(LDX | MEM, 0);
    a.stmt(ALU | ADD | X, 0);
    a.jmp("mix");

    a.label("addr_only");
    a.stmt(LD | MEM, 0);
    // A = (A * golden) ^ ((A * golden) >> 16): the low bits (what `% members` uses) depend
    // on all input bits.
    a.label("mix");
    a.stmt(ALU | MUL | K, 0x9e37_79b1);
    a.stmt(MISC | TAX, 0);
    a.stmt(ALU | RSH | K, 16);
    a.stmt(ALU | XOR | X, 0);
    a.stmt(RET | A, 0);

    a.label("other");
    a.stmt(RET | K, 0);
    a.finish()
}

pub(super) const LD: u16 = 0x00;
pub(super) const LDX: u16 = 0x01;
pub(super) const ST: u16 = 0x02;
pub(super) const ALU: u16 = 0x04;
pub(super) const JMP: u16 = 0x05;
pub(super) const RET: u16 = 0x06;
pub(super) const MISC: u16 = 0x07;
pub(super) const W: u16 = 0x00;
pub(super) const H: u16 = 0x08;
pub(super) const B: u16 = 0x10;
pub(super) const ABS: u16 = 0x20;
pub(super) const IND: u16 = 0x40;
pub(super) const MEM: u16 = 0x60;
pub(super) const ADD: u16 = 0x00;
pub(super) const MUL: u16 = 0x20;
pub(super) const AND: u16 = 0x50;
pub(super) const LSH: u16 = 0x60;
pub(super) const RSH: u16 = 0x70;
pub(super) const XOR: u16 = 0xa0;
pub(super) const JA: u16 = 0x00;
pub(super) const JEQ: u16 = 0x10;
pub(super) const JSET: u16 = 0x40;
pub(super) const K: u16 = 0x00;
pub(super) const X: u16 = 0x08;
pub(super) const A: u16 = 0x10;
pub(super) const TAX: u16 = 0x00;
/// `SKF_NET_OFF`: loads relative to the network header.
pub(super) const NET: u32 = 0xfff0_0000;
/// `SKF_AD_OFF + SKF_AD_PROTOCOL`: the skb's protocol (an ethertype, host order).
pub(super) const AD_PROTOCOL: u32 = 0xffff_f000;

enum Item {
    Op(u16, u32),
    Cond(u16, u32, &'static str, &'static str),
    Jmp(&'static str),
    Label(&'static str),
}

#[derive(Default)]
pub(super) struct Asm {
    items: Vec<Item>,
}

impl Asm {
    pub(super) fn stmt(&mut self, code: u16, k: u32) {
        self.items.push(Item::Op(code, k));
    }
    pub(super) fn jeq(&mut self, k: u32, t: &'static str, f: &'static str) {
        self.items.push(Item::Cond(JMP | JEQ | K, k, t, f));
    }
    pub(super) fn jset(&mut self, k: u32, t: &'static str, f: &'static str) {
        self.items.push(Item::Cond(JMP | JSET | K, k, t, f));
    }
    pub(super) fn jmp(&mut self, to: &'static str) {
        self.items.push(Item::Jmp(to));
    }
    pub(super) fn label(&mut self, name: &'static str) {
        self.items.push(Item::Label(name));
    }

    /// Resolves the labels. Panics on an unknown label or a backward or too long jump:
    /// the program is fixed, so the unit tests catch any such mistake.
    pub(super) fn finish(self) -> Vec<libc::sock_filter> {
        let mut at = std::collections::HashMap::new();
        let mut pc = 0usize;
        for item in &self.items {
            match item {
                Item::Label(l) => {
                    at.insert(*l, pc);
                }
                _ => pc += 1,
            }
        }
        let rel = |from: usize, l: &str| -> usize {
            let to = at[l];
            assert!(to > from, "backward jump to {l}");
            to - from - 1
        };
        let mut out = Vec::with_capacity(pc);
        for item in &self.items {
            let pc = out.len();
            let ins = match *item {
                Item::Label(_) => continue,
                Item::Op(code, k) => libc::sock_filter {
                    code,
                    jt: 0,
                    jf: 0,
                    k,
                },
                Item::Cond(code, k, t, f) => libc::sock_filter {
                    code,
                    jt: u8::try_from(rel(pc, t)).expect("short jump"),
                    jf: u8::try_from(rel(pc, f)).expect("short jump"),
                    k,
                },
                Item::Jmp(to) => libc::sock_filter {
                    code: JMP | JA,
                    jt: 0,
                    jf: 0,
                    k: rel(pc, to) as u32,
                },
            };
            out.push(ins);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions the fanout program uses, running on
    /// a network-layer packet the way the kernel does for `SKF_NET_OFF` loads.
    fn run(prog: &[libc::sock_filter], proto: u16, net: &[u8]) -> u32 {
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        let load = |off: u32, size: usize| -> Option<u32> {
            let off = off.checked_sub(NET)? as usize;
            let b = net.get(off..off + size)?;
            Some(b.iter().fold(0u32, |v, &byte| (v << 8) | u32::from(byte)))
        };
        let mut pc = 0;
        loop {
            let i = prog[pc];
            pc += 1;
            let size = match i.code & 0x18 {
                W => 4,
                H => 2,
                _ => 1,
            };
            match i.code {
                c if c == LD | W | ABS && i.k == AD_PROTOCOL => a = u32::from(proto),
                c if c & 0x07 == LD && c & 0xe0 == ABS => match load(i.k, size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c & 0x07 == LD && c & 0xe0 == IND => match load(i.k.wrapping_add(x), size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == LD | MEM => a = m[i.k as usize],
                c if c == LDX | MEM => x = m[i.k as usize],
                c if c == ST => m[i.k as usize] = a,
                c if c == MISC | TAX => x = a,
                c if c == ALU | ADD | X => a = a.wrapping_add(x),
                c if c == ALU | XOR | X => a ^= x,
                c if c == ALU | AND | K => a &= i.k,
                c if c == ALU | LSH | K => a <<= i.k,
                c if c == ALU | RSH | K => a >>= i.k,
                c if c == ALU | MUL | K => a = a.wrapping_mul(i.k),
                c if c == JMP | JA => pc += i.k as usize,
                c if c == JMP | JEQ | K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                c if c == JMP | JSET | K => {
                    pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf })
                }
                c if c == RET | A => return a,
                c if c == RET | K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p
    }

    fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = next;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p
    }

    #[test]
    fn fanout_program_is_valid_cbpf() {
        let prog = symmetric_fanout_program();
        assert!(prog.len() < 4096);
        // Last instruction returns; every jump lands inside the program.
        assert_eq!(prog.last().unwrap().code & 0x07, RET);
        for (pc, i) in prog.iter().enumerate() {
            if i.code & 0x07 == JMP {
                let reach = if i.code == JMP | JA {
                    i.k as usize
                } else {
                    usize::from(i.jt.max(i.jf))
                };
                assert!(pc + 1 + reach < prog.len(), "jump out at {pc}");
            }
        }
    }

    #[test]
    fn fanout_hash_is_symmetric() {
        let prog = symmetric_fanout_program();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut buckets = [0u32; 4];
        for _ in 0..2000 {
            let (s, d) = ((rnd() as u32).to_be_bytes(), (rnd() as u32).to_be_bytes());
            let (sp, dp) = (rnd() as u16, rnd() as u16);
            for proto in [6u8, 17, 132] {
                let fwd = run(&prog, 0x0800, &ipv4(s, d, proto, sp, dp, 0));
                let rev = run(&prog, 0x0800, &ipv4(d, s, proto, dp, sp, 0));
                assert_eq!(fwd, rev);
                if proto == 6 {
                    buckets[(fwd % 4) as usize] += 1;
                }
            }
            // Ports matter for TCP; fragments and other protocols use addresses only.
            let other_port = run(&prog, 0x0800, &ipv4(s, d, 6, sp ^ 1, dp, 0));
            let tcp = run(&prog, 0x0800, &ipv4(s, d, 6, sp, dp, 0));
            assert_ne!(tcp, other_port);
            let first_frag = run(&prog, 0x0800, &ipv4(s, d, 6, sp, dp, 0x2000));
            let later_frag = run(&prog, 0x0800, &ipv4(d, s, 6, 0, 0, 0x0010));
            let icmp = run(&prog, 0x0800, &ipv4(d, s, 1, 0, 0, 0));
            assert_eq!(first_frag, later_frag);
            assert_eq!(first_frag, icmp);

            let mut s6 = [0u8; 16];
            let mut d6 = [0u8; 16];
            s6.iter_mut()
                .chain(d6.iter_mut())
                .for_each(|b| *b = rnd() as u8);
            let fwd = run(&prog, 0x86dd, &ipv6(s6, d6, 6, sp, dp));
            let rev = run(&prog, 0x86dd, &ipv6(d6, s6, 6, dp, sp));
            assert_eq!(fwd, rev);
            let ext = run(&prog, 0x86dd, &ipv6(s6, d6, 0, sp, dp));
            let ext_rev = run(&prog, 0x86dd, &ipv6(d6, s6, 0, dp, sp));
            assert_eq!(ext, ext_rev);
        }
        // Spread: every bucket gets a fair share.
        for b in buckets {
            assert!((400..600).contains(&b), "{buckets:?}");
        }
        // Non-IP goes to socket 0; a truncated IPv4 header gives 0 as the kernel does.
        assert_eq!(run(&prog, 0x0806, &[0u8; 28]), 0);
        assert_eq!(run(&prog, 0x0800, &[0x45, 0, 0, 0]), 0);
    }

    #[test]
    fn sequential_ports_spread_over_two_sockets() {
        // The live test's shape: one client address, consecutive ephemeral ports.
        let prog = symmetric_fanout_program();
        let mut counts = [0; 2];
        for port in 40_000u16..40_020 {
            let h = run(
                &prog,
                0x0800,
                &ipv4([10, 77, 0, 1], [10, 77, 0, 2], 6, port, 5000, 0),
            );
            counts[(h % 2) as usize] += 1;
        }
        assert!(counts[0] >= 4 && counts[1] >= 4, "{counts:?}");
    }

    /// The program computes `shard::fanout_hash`, packet by packet: both protocols, ports or
    /// not, fragments, extension headers, other ethertypes, and every truncation.
    #[test]
    fn program_computes_the_shard_modules_fanout_hash() {
        use crate::io::shard::fanout_hash;
        let prog = symmetric_fanout_program();
        let mut seed = 0x0bad_cafe_f00d_1234u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0;
        for _ in 0..300 {
            let (s, d) = ((rnd() as u32).to_be_bytes(), (rnd() as u32).to_be_bytes());
            let (sp, dp) = (rnd() as u16, rnd() as u16);
            let mut s6 = [0u8; 16];
            let mut d6 = [0u8; 16];
            s6.iter_mut()
                .chain(d6.iter_mut())
                .for_each(|b| *b = rnd() as u8);
            let frag = [0u16, 0x2000, 0x0010, 0x4000][(rnd() % 4) as usize];
            let mut packets = Vec::new();
            for proto in [6u8, 17, 132, 1, 0] {
                packets.push((0x0800, ipv4(s, d, proto, sp, dp, frag)));
                packets.push((0x86dd, ipv6(s6, d6, proto, sp, dp)));
            }
            // IPv4 with options: the ports sit after IHL * 4 bytes.
            let mut opts = ipv4(s, d, 6, sp, dp, 0);
            opts[0] = 0x46;
            opts.splice(20..20, [1u8, 1, 1, 0]);
            packets.push((0x0800, opts));
            packets.push((0x0806, vec![0u8; 28]));
            for (proto, p) in packets {
                for cut in 0..=p.len() {
                    let net = &p[..cut];
                    assert_eq!(
                        run(&prog, proto, net),
                        fanout_hash(proto, net),
                        "ethertype {proto:#x}, {cut} of {} bytes: {net:02x?}",
                        p.len()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }
}
