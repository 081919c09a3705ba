//! `streamhash`: what a reader of each direction of every TCP connection saw, as a plugin.
//!
//! For every connection it records one JSON line, identical to the line
//! `flowpeek streams --json` prints for it (both are written by
//! `flowpeek_plugin_api::records::StreamFields::to_json`):
//!
//! ```text
//! {"c2s":{"bytes":N,"crc32":"8 hex","missing":N,"overlap":N,"sha256":"64 hex"},
//!  "client":"IP:PORT","close":"fin","end":SECS.MICROS,"partial":true,
//!  "s2c":{...},"server":"IP:PORT","start":SECS.MICROS}
//! ```
//!
//! (one line, keys in sorted order; `partial` only when the connection was picked up
//! mid-stream; `"buffer_refused":true` only when the host's `--buffer-memory` refused a
//! side its buffer: the bytes it could not store are then counted in `missing`, so the
//! record never claims a stream it did not see). `bytes` were delivered in order and hashed (SHA-256, CRC-32 IEEE); `missing`
//! bytes were skipped over gaps or lost; `overlap` bytes arrived more than once. `close` is
//! `fin`, `rst`, `timeout`, `evicted`, or `eof` for any other end (end of capture, shutdown,
//! reload, stop).
//!
//! It reads each side with `peek` on every `NewData` and at its `ConnEnd`, so streams of any
//! length go through a bounded buffer. Records come out when a connection's second side ends
//! (end order, not start order).
//!
//! Configuration (`streamhash.toml`): `buffer = 262144`, the receive buffer per side in bytes
//! (default 256 KiB, as `flowpeek streams`); `hash = "sha256"` (the default: SHA-256 and
//! CRC-32, the record `flowpeek streams --json` prints), `"crc32"` (CRC-32 only: the
//! `sha256` field is left out) or `"xxh3"` (XXH3-64 only, in an `xxh3` field instead of both):
//! the cheaper hashes still read every byte, for throughput runs where SHA-256 is the
//! bottleneck. Unknown keys are refused.
#![forbid(unsafe_code)]

use flowpeek_plugin_api::records::{self, DirectionFields, StreamFields};
use flowpeek_plugin_api::sdk::*;
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

/// Receive buffer per side unless configured.
const DEFAULT_BUFFER: u32 = 1 << 18;

/// Flow flag: its first side has ended.
const FIRST_SIDE_ENDED: u16 = 1;

/// Which digests a record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HashKind {
    /// SHA-256 and CRC-32 (as `flowpeek streams --json`).
    Sha256,
    /// CRC-32 only.
    Crc32,
    /// XXH3-64 only.
    Xxh3,
}

/// The running digest of one direction.
enum Digests {
    Sha256(Box<Sha256>, crc32fast::Hasher),
    Crc32(crc32fast::Hasher),
    Xxh3(Box<Xxh3>),
}

/// What a reader of one direction has seen so far.
struct Direction {
    digests: Digests,
    bytes: u64,
    lost: u64,
    /// The host refused this direction's buffer (`OutOfBufferMemory`).
    refused: bool,
}

impl Direction {
    fn new(kind: HashKind) -> Direction {
        Direction {
            digests: match kind {
                HashKind::Sha256 => {
                    Digests::Sha256(Box::new(Sha256::new()), crc32fast::Hasher::new())
                }
                HashKind::Crc32 => Digests::Crc32(crc32fast::Hasher::new()),
                HashKind::Xxh3 => Digests::Xxh3(Box::new(Xxh3::new())),
            },
            bytes: 0,
            lost: 0,
            refused: false,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match &mut self.digests {
            Digests::Sha256(sha, crc) => {
                sha.update(bytes);
                crc.update(bytes);
            }
            Digests::Crc32(crc) => crc.update(bytes),
            Digests::Xxh3(x) => x.update(bytes),
        }
        self.bytes += bytes.len() as u64;
    }

    /// The record's fields; `sha256` receives the hex digest the fields borrow.
    /// `missing` is the host's count of the side's missing bytes, which includes the
    /// bytes a refused buffer could not store.
    fn fields(self, overlap: u64, missing: u64, sha256: &mut String) -> DirectionFields<'_> {
        let (mut crc32, mut xxh3) = (None, None);
        match self.digests {
            Digests::Sha256(sha, crc) => {
                *sha256 = records::hex(&sha.finalize());
                crc32 = Some(crc.finalize());
            }
            Digests::Crc32(crc) => crc32 = Some(crc.finalize()),
            Digests::Xxh3(x) => xxh3 = Some(x.digest()),
        }
        DirectionFields {
            bytes: self.bytes,
            missing: if self.refused {
                self.lost.max(missing)
            } else {
                self.lost
            },
            overlap,
            sha256: (!sha256.is_empty()).then_some(sha256.as_str()),
            crc32,
            xxh3,
        }
    }
}

/// One live connection: indexed by `Side` (client's buffer first).
struct Live {
    dirs: [Direction; 2],
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// The monitor: hashes both directions of every flow.
pub struct StreamHash {
    /// Per-flow state, found through the flow's user value.
    live: FlowSlab<Live>,
    scratch: Box<[u8]>,
    buffer: u32,
    hash: HashKind,
}

fn parse_config(text: &str) -> Result<(u32, HashKind), String> {
    config_keys(text, &["buffer", "hash"])?;
    let buffer = match config_u64(text, "buffer")? {
        None => DEFAULT_BUFFER,
        Some(0) => return Err("buffer: must be at least 1 byte".into()),
        Some(n) => u32::try_from(n).map_err(|_| format!("buffer: {n} is more than 4 GiB"))?,
    };
    let hash = match config_str(text, "hash") {
        None | Some("sha256") => HashKind::Sha256,
        Some("crc32") => HashKind::Crc32,
        Some("xxh3") => HashKind::Xxh3,
        Some(other) => {
            return Err(format!(
                "hash: {other:?} is not one of \"sha256\", \"crc32\", \"xxh3\""
            ))
        }
    };
    Ok((buffer, hash))
}

impl StreamHash {
    /// Hashes everything new in `side`'s buffer.
    fn drain(&mut self, cx: &mut Cx<'_>, flow: Flow, side: Side, idx: usize) {
        let Some(live) = self.live.get_mut(idx) else {
            return;
        };
        let d = &mut live.dirs[side_index(side)];
        loop {
            match cx.peek(flow, side, &mut self.scratch) {
                Ok(0) => break,
                Ok(n) => d.update(&self.scratch[..n.min(self.scratch.len())]),
                Err(PeekError::Lost(n)) => d.lost += n,
                Err(PeekError::Errno(_)) => break,
            }
        }
    }

    /// Each side gets its own `ConnEnd`; the second one completes the record.
    fn finish_side(&mut self, cx: &mut Cx<'_>, flow: Flow, idx: usize, reason: Option<EndReason>) {
        let flags = self.live.flags(cx, flow);
        if flags & FIRST_SIDE_ENDED == 0 {
            self.live.set_flags(cx, flow, flags | FIRST_SIDE_ENDED);
            return;
        }
        let Some(live) = self.live.release(idx) else {
            return;
        };
        let (Ok((client, server)), Ok((start, end, _serial)), Ok(partial)) =
            (cx.addresses(flow), cx.flow_times(flow), cx.is_partial(flow))
        else {
            return;
        };
        let info = |s: Side| {
            cx.buffer_info(flow, s)
                .map_or((0, 0), |i| (i.overlap, i.missing))
        };
        let ((c2s_overlap, c2s_missing), (s2c_overlap, s2c_missing)) =
            (info(Side::Server), info(Side::Client));
        let [cli, svr] = live.dirs;
        let buffer_refused = cli.refused || svr.refused;
        let (mut c2s_sha, mut s2c_sha) = (String::new(), String::new());
        // The server side's buffer holds what the client sent.
        let record = StreamFields {
            client,
            server,
            start,
            end,
            close: records::close_name(reason),
            partial,
            buffer_refused,
            c2s: svr.fields(c2s_overlap, c2s_missing, &mut c2s_sha),
            s2c: cli.fields(s2c_overlap, s2c_missing, &mut s2c_sha),
        };
        let _ = cx.emit(&record.to_json());
    }
}

impl Monitor for StreamHash {
    const NAME: &'static str = "streamhash";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_core: u32, config: &str) -> Result<Self, String> {
        let (buffer, hash) = parse_config(config)?;
        Ok(StreamHash {
            live: FlowSlab::default(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            buffer,
            hash,
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with(EventKind::ConnEnd, Hook::Snd)
            .with(EventKind::Error, Hook::None)
            .buffers(Buffer::AtLeast(self.buffer))
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let Some(side) = ev.side else {
            return;
        };
        let kind = self.hash;
        let make = |_: &Cx<'_>| Live {
            dirs: [Direction::new(kind), Direction::new(kind)],
        };
        let Some(idx) = self.live.entry(cx, ev.flow, make) else {
            return;
        };
        if ev.kind == EventKind::Error {
            if ev.detail == Detail::Error(ErrorKind::OutOfBufferMemory) {
                if let Some(live) = self.live.get_mut(idx) {
                    live.dirs[side_index(side)].refused = true;
                }
            }
            return;
        }
        self.drain(cx, ev.flow, side, idx);
        if ev.kind == EventKind::ConnEnd {
            let reason = match ev.detail {
                Detail::End(r) => Some(r),
                _ => cx.end_reason(ev.flow),
            };
            self.finish_side(cx, ev.flow, idx, reason);
        }
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        let open = self.live.len();
        if open > 0 {
            cx.log(
                1,
                &format!("streamhash: {open} connections had not ended; no record for them"),
            );
        }
    }
}

// The macro's items are the library's entry point, not API (and carry no docs).
#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::StreamHash);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        assert_eq!(parse_config(""), Ok((DEFAULT_BUFFER, HashKind::Sha256)));
        assert_eq!(
            parse_config("# c\nbuffer = 65_536 # bytes\n"),
            Ok((65536, HashKind::Sha256))
        );
        assert_eq!(
            parse_config("hash = \"xxh3\"\n"),
            Ok((DEFAULT_BUFFER, HashKind::Xxh3))
        );
        assert_eq!(
            parse_config("hash = crc32"),
            Ok((DEFAULT_BUFFER, HashKind::Crc32))
        );
        assert!(parse_config("hash = md5").is_err());
        assert!(parse_config("buffer = lots").is_err());
        assert!(parse_config("buffer = 0").is_err());
        assert!(parse_config("buffer = 99999999999").is_err());
        let e = parse_config("bufer = 1").unwrap_err();
        assert!(
            e.contains("unknown key \"bufer\"") && e.contains("buffer, hash"),
            "{e}"
        );
        assert!(parse_config("buffer 1").is_err());
    }
}
