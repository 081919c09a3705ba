//! `flowpeek streams --write DIR`: each direction of every connection to a file of its own,
//! the way tcpflow does it.
//!
//! - Names: a template ([`NameTemplate`]), by default tcpflow's
//!   `SRCIP.SRCPORT-DSTIP.DSTPORT` with zero-padded IPv4 octets (`010.000.000.001`) and ports
//!   (`00080`); IPv6 addresses print compressed, as tcpflow does. A name already used in this
//!   run (a 4-tuple reused after a close) gets tcpflow's suffix `c1`, `c2`, ...; a file of the
//!   same name left in the directory by an earlier run is replaced.
//! - Gaps: skipped (the file holds the delivered bytes, as gopacket and tshark deliver them)
//!   or, with [`GapFill::Zero`], written as zeros at their place (tcpflow's behaviour: the
//!   file offset is the stream offset). Zeros are a hole in the file (sparse), not written
//!   bytes. Either way the record lists the gaps.
//! - A direction that carried no byte gets no file.
//!
//! Bytes are gathered per direction in a buffer of at most [`PENDING`] bytes (grown only as a
//! direction carries data) and written with `pwrite` when it is full and when the
//! connection ends; no file stays open between writes, so any number of connections may be
//! open at once. The first error (disk full, permission denied) stops every later write and
//! is carried by the records of the connections it touched ([`FilesError`]), so that the
//! caller reports it and stops the run.
//!
//! Must not: decide what the bytes are (the hasher reads them), or hold more than
//! [`PENDING`] bytes per direction.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flowpeek_plugin_api::records::Gap;

/// Bytes a direction gathers before they are written.
pub const PENDING: usize = 32 * 1024;

/// Gaps a record lists per direction; more are counted (`gaps_dropped`).
pub const MAX_GAPS: usize = 64;

/// tcpflow's default name, without its VLAN part: `%A.%a-%B.%b%C%c`.
pub const DEFAULT_TEMPLATE: &str = "%A.%a-%B.%b%C%c";

/// What to do with the bytes of a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GapFill {
    /// Leave them out: the file holds the delivered bytes only.
    #[default]
    Skip,
    /// Write zeros in their place (tcpflow): the file offset is the stream offset.
    Zero,
}

/// A file name template: tcpflow's `%` fields, and flowpeek's.
///
/// | field | is |
/// | --- | --- |
/// | `%A` / `%a` | the sender's address (IPv4 zero-padded, `010.000.000.001`) / port (5 digits) |
/// | `%B` / `%b` | the receiver's address / port |
/// | `%C` / `%c` | `c` / the count, when the name was already used in this run (empty at first) |
/// | `%#` | that count, always (0 at first) |
/// | `%u` | the connection's `uid` |
/// | `%d` | the direction: `c2s` or `s2c` |
/// | `%n` | the connection's number (0, 1, ... in order of first packet, as `follow --conn`) |
/// | `%%` | a `%` |
///
/// `/` makes subdirectories; a template may not start with `/` or hold a `..` part. If it
/// has neither `%c` nor `%#`, a reused name gets `c1`, `c2`, ... at its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate {
    text: String,
    counted: bool,
}

impl Default for NameTemplate {
    fn default() -> NameTemplate {
        NameTemplate::new(DEFAULT_TEMPLATE).expect("the default template is valid")
    }
}

impl std::str::FromStr for NameTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<NameTemplate, String> {
        NameTemplate::new(s)
    }
}

impl NameTemplate {
    /// Checks `text`: every `%` field known, a relative path inside the directory.
    pub fn new(text: &str) -> Result<NameTemplate, String> {
        if text.is_empty() {
            return Err("the name template is empty".into());
        }
        if text.starts_with('/') || text.split('/').any(|p| p == ".." || p == ".") {
            return Err(format!(
                "{text:?}: a name must stay inside the --write directory (no leading '/', no '.' or '..' part)"
            ));
        }
        if text.ends_with('/') {
            return Err(format!("{text:?}: a name may not end with '/'"));
        }
        let mut counted = false;
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                continue;
            }
            match chars.next() {
                Some('A' | 'a' | 'B' | 'b' | 'C' | 'u' | 'd' | 'n' | '%') => {}
                Some('c' | '#') => counted = true,
                Some(o) => {
                    return Err(format!(
                        "{text:?}: unknown field %{o} (known: %A %a %B %b %C %c %# %u %d %n %%)"
                    ))
                }
                None => {
                    return Err(format!(
                        "{text:?}: a lone '%' at the end (write %% for '%')"
                    ))
                }
            }
        }
        Ok(NameTemplate {
            text: text.to_owned(),
            counted,
        })
    }

    /// The name for one direction, `count` the times this name was used before in the run.
    pub fn expand(&self, out: &mut String, who: &DirName, count: u32) {
        out.clear();
        let mut chars = self.text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('A') => push_ip(out, who.sender.ip()),
                Some('a') => push_port(out, who.sender.port()),
                Some('B') => push_ip(out, who.receiver.ip()),
                Some('b') => push_port(out, who.receiver.port()),
                Some('C') if count > 0 => out.push('c'),
                Some('c') if count > 0 => {
                    let _ = write!(out, "{count}");
                }
                Some('#') => {
                    let _ = write!(out, "{count}");
                }
                Some('u') => {
                    let _ = write!(out, "{:016x}", who.uid);
                }
                Some('d') => out.push_str(if who.c2s { "c2s" } else { "s2c" }),
                Some('n') => {
                    let _ = write!(out, "{}", who.serial);
                }
                Some('%') => out.push('%'),
                _ => {}
            }
        }
        if !self.counted && count > 0 {
            let _ = write!(out, "c{count}");
        }
    }
}

fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let _ = write!(out, "{a:03}.{b:03}.{c:03}.{d:03}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_port(out: &mut String, port: u16) {
    let _ = write!(out, "{port:05}");
}

/// What a direction's name is made of.
#[derive(Clone, Copy, Debug)]
pub struct DirName {
    /// Who sent the bytes.
    pub sender: SocketAddr,
    /// Who received them.
    pub receiver: SocketAddr,
    /// The connection's uid.
    pub uid: u64,
    /// The connection's number.
    pub serial: u64,
    /// Client to server.
    pub c2s: bool,
}

/// Settings of `--write`.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// How files are named.
    pub name: NameTemplate,
    /// What gaps become.
    pub gaps: GapFill,
}

/// The first write error of a run, carried by the records it touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    pub kind: io::ErrorKind,
    /// The system's words for it.
    pub message: String,
}

impl std::fmt::Display for FilesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = match self.kind {
            io::ErrorKind::StorageFull => "; free some space or give --write another directory",
            io::ErrorKind::PermissionDenied => "; give --write a directory you may write to",
            _ => "",
        };
        write!(f, "writing {}: {}{hint}", self.path.display(), self.message)
    }
}

/// One direction's file, while its connection is open.
#[derive(Debug, Default)]
pub struct DirFile {
    /// The name (relative to the directory), once the first byte came.
    name: Option<String>,
    /// Bytes not written yet, for file offset `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    /// The file's length as it will be (zero-filled gaps included).
    len: u64,
    /// The end of the bytes written so far.
    written: u64,
    /// Stream offset: bytes delivered plus bytes missing so far.
    offset: u64,
    gaps: Vec<Gap>,
    gaps_dropped: u64,
}

/// What a direction's file came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileOutcome {
    /// The file's name relative to the directory; `None` when the direction carried nothing.
    pub name: Option<String>,
    /// The gaps, in stream order (at most [`MAX_GAPS`]).
    pub gaps: Vec<Gap>,
    /// Gaps left out of the list.
    pub gaps_dropped: u64,
}

/// The writer of one engine's files.
#[derive(Debug)]
pub struct StreamFiles {
    opts: WriteOptions,
    /// Every name given out in this run.
    used: HashSet<String>,
    scratch: String,
    error: Option<FilesError>,
}

impl StreamFiles {
    /// A writer into `opts.dir` (which must exist).
    pub fn new(opts: WriteOptions) -> StreamFiles {
        StreamFiles {
            opts,
            used: HashSet::new(),
            scratch: String::new(),
            error: None,
        }
    }

    /// The first error, if any: every write after it was skipped.
    pub fn error(&self) -> Option<&FilesError> {
        self.error.as_ref()
    }

    /// Takes delivered `bytes` for `f`; `who` names the file at its first byte.
    pub fn data(&mut self, f: &mut DirFile, bytes: &[u8], who: impl FnOnce() -> Option<DirName>) {
        f.offset += bytes.len() as u64;
        if bytes.is_empty() || self.error.is_some() {
            return;
        }
        if f.name.is_none() && !self.name(f, who) {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            if f.pending_at + f.pending.len() as u64 != f.len || f.pending.len() == PENDING {
                self.flush(f);
                if self.error.is_some() {
                    return;
                }
            }
            if f.pending.is_empty() {
                f.pending_at = f.len;
            }
            let n = rest.len().min(PENDING - f.pending.len());
            f.pending.extend_from_slice(&rest[..n]);
            f.len += n as u64;
            rest = &rest[n..];
        }
    }

    /// Takes a gap of `len` bytes for `f`.
    pub fn gap(&mut self, f: &mut DirFile, len: u64, who: impl FnOnce() -> Option<DirName>) {
        if len == 0 {
            return;
        }
        if f.gaps.len() < MAX_GAPS {
            f.gaps.push(Gap {
                offset: f.offset,
                len,
            });
        } else {
            f.gaps_dropped += 1;
        }
        f.offset += len;
        if self.opts.gaps == GapFill::Zero && self.error.is_none() {
            if f.name.is_none() && !self.name(f, who) {
                return;
            }
            // A hole: the pending bytes stop here, the next ones go after it.
            f.len += len;
        }
    }

    /// Writes what `f` still holds and says what became of it.
    pub fn close(&mut self, mut f: DirFile) -> FileOutcome {
        if self.error.is_none() {
            self.flush(&mut f);
        }
        if self.error.is_none() && f.len > f.written {
            if let Some(name) = &f.name {
                // A zero-filled gap at the end is a hole nothing was written after.
                let path = self.opts.dir.join(name);
                let grown = OpenOptions::new().write(true).open(&path).and_then(|file| {
                    if file.metadata()?.len() < f.len {
                        file.set_len(f.len)?;
                    }
                    Ok(())
                });
                if let Err(e) = grown {
                    self.fail(path, &e);
                }
            }
        }
        FileOutcome {
            name: f.name,
            gaps: f.gaps,
            gaps_dropped: f.gaps_dropped,
        }
    }

    fn name(&mut self, f: &mut DirFile, who: impl FnOnce() -> Option<DirName>) -> bool {
        let Some(who) = who() else {
            return false;
        };
        let mut count = 0u32;
        loop {
            self.opts.name.expand(&mut self.scratch, &who, count);
            if !self.used.contains(&self.scratch) {
                break;
            }
            count += 1;
        }
        let name = self.scratch.clone();
        self.used.insert(name.clone());
        let path = self.opts.dir.join(&name);
        let created = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| File::create(&path));
        match created {
            Ok(_) => {
                f.name = Some(name);
                true
            }
            Err(e) => {
                self.fail(path, &e);
                false
            }
        }
    }

    fn flush(&mut self, f: &mut DirFile) {
        if f.pending.is_empty() {
            return;
        }
        let Some(name) = &f.name else {
            f.pending.clear();
            return;
        };
        let path = self.opts.dir.join(name);
        let written = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|file| file.write_all_at(&f.pending, f.pending_at));
        f.written = f.written.max(f.pending_at + f.pending.len() as u64);
        f.pending.clear();
        if let Err(e) = written {
            self.fail(path, &e);
        }
    }

    fn fail(&mut self, path: PathBuf, e: &io::Error) {
        if self.error.is_none() {
            self.error = Some(FilesError {
                path,
                kind: e.kind(),
                message: e.to_string(),
            });
        }
    }
}

/// Creates `dir` if needed and checks that files can be made in it.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".flowpeek-write-probe-{}", std::process::id()));
    File::create(&probe)?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(s: &str, r: &str, c2s: bool) -> DirName {
        DirName {
            sender: s.parse().unwrap(),
            receiver: r.parse().unwrap(),
            uid: 0xabc,
            serial: 7,
            c2s,
        }
    }

    #[test]
    fn tcpflow_names() {
        let t = NameTemplate::default();
        let mut s = String::new();
        t.expand(&mut s, &who("10.0.0.1:80", "192.168.1.20:5555", false), 0);
        assert_eq!(s, "010.000.000.001.00080-192.168.001.020.05555");
        t.expand(&mut s, &who("10.0.0.1:80", "192.168.1.20:5555", false), 2);
        assert_eq!(s, "010.000.000.001.00080-192.168.001.020.05555c2");
        // IPv6 compressed, as tcpflow prints it.
        t.expand(
            &mut s,
            &who(
                "[2001:4860:4860::8888]:443",
                "[2600:1f13::18eb]:33892",
                true,
            ),
            0,
        );
        assert_eq!(s, "2001:4860:4860::8888.00443-2600:1f13::18eb.33892");
        let t = NameTemplate::new("%n/%u-%d-%#%%").unwrap();
        t.expand(&mut s, &who("10.0.0.1:1", "10.0.0.2:2", true), 0);
        assert_eq!(s, "7/0000000000000abc-c2s-0%");
        // No count field: the suffix goes at the end.
        let t = NameTemplate::new("%u").unwrap();
        t.expand(&mut s, &who("10.0.0.1:1", "10.0.0.2:2", true), 3);
        assert_eq!(s, "0000000000000abcc3");
    }

    #[test]
    fn bad_templates() {
        for bad in ["", "/abs/%A", "a/../b", "./x", "%x", "50%", "dir/"] {
            assert!(NameTemplate::new(bad).is_err(), "{bad:?}");
        }
        let e = NameTemplate::new("%q").unwrap_err();
        assert!(e.contains("unknown field %q"), "{e}");
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowpeek-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(gaps: GapFill, dir: &Path) -> (FileOutcome, Option<FilesError>) {
        let mut files = StreamFiles::new(WriteOptions {
            dir: dir.to_path_buf(),
            name: NameTemplate::new("f").unwrap(),
            gaps,
        });
        let w = || Some(who("10.0.0.1:1", "10.0.0.2:2", true));
        let mut f = DirFile::default();
        files.data(&mut f, b"ab", w);
        files.gap(&mut f, 3, w);
        // More than one pending buffer's worth, then a gap at the very end.
        files.data(&mut f, &vec![b'c'; PENDING + 10], w);
        files.gap(&mut f, 2, w);
        let out = files.close(f);
        (out, files.error().cloned())
    }

    #[test]
    fn gaps_skipped_or_zero_filled_to_the_end() {
        let d = tmp("zero");
        let (out, err) = write(GapFill::Zero, &d);
        assert_eq!(err, None);
        assert_eq!(out.name.as_deref(), Some("f"));
        assert_eq!(
            out.gaps,
            [
                Gap { offset: 2, len: 3 },
                Gap {
                    offset: 5 + PENDING as u64 + 10,
                    len: 2
                }
            ]
        );
        let mut want = b"ab\0\0\0".to_vec();
        want.extend(vec![b'c'; PENDING + 10]);
        want.extend([0, 0]);
        assert_eq!(std::fs::read(d.join("f")).unwrap(), want);
        let d2 = tmp("skip");
        let (_, err) = write(GapFill::Skip, &d2);
        assert_eq!(err, None);
        let mut want = b"ab".to_vec();
        want.extend(vec![b'c'; PENDING + 10]);
        assert_eq!(std::fs::read(d2.join("f")).unwrap(), want);
        let _ = std::fs::remove_dir_all(d);
        let _ = std::fs::remove_dir_all(d2);
    }

    #[test]
    fn an_error_is_kept_not_raised() {
        // The "directory" is a file: nothing can be made in it.
        let d = tmp("notdir");
        let file = d.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let (out, err) = write(GapFill::Skip, &file);
        let err = err.expect("an error");
        assert!(err.path.starts_with(&file), "{err}");
        assert!(err.to_string().starts_with("writing "), "{err}");
        assert_eq!(out.name, None);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn many_gaps_are_counted_past_the_list() {
        let d = tmp("many");
        let mut files = StreamFiles::new(WriteOptions {
            dir: d.clone(),
            name: NameTemplate::default(),
            gaps: GapFill::Skip,
        });
        let mut f = DirFile::default();
        let w = || Some(who("10.0.0.1:1", "10.0.0.2:2", true));
        for _ in 0..MAX_GAPS + 5 {
            files.data(&mut f, b"x", w);
            files.gap(&mut f, 1, w);
        }
        let out = files.close(f);
        assert_eq!((out.gaps.len(), out.gaps_dropped), (MAX_GAPS, 5));
        let _ = std::fs::remove_dir_all(d);
    }
}
