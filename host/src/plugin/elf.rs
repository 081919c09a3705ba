//! A bounds-checked reader of an ELF64 file's header, program headers and section header
//! table extent: enough to tell a complete shared library for this machine from a truncated,
//! half-written or foreign file before anything maps it.
//!
//! Owns: the structural checks on the bytes of a plugin's private copy ([`check`]).
//! Must not: map, load or run anything; it reads a byte slice and nothing else.

use std::fmt;

const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const ET_REL: u16 = 1;
/// `e_phnum` value saying the real count is elsewhere (never produced for libraries).
const PN_XNUM: u16 = 0xffff;

/// The `e_machine` of the machine this host was built for, with its name.
const MACHINE: Option<(u16, &str)> = if cfg!(target_arch = "x86_64") {
    Some((62, "x86_64"))
} else if cfg!(target_arch = "aarch64") {
    Some((183, "aarch64"))
} else if cfg!(target_arch = "riscv64") {
    Some((243, "riscv64"))
} else if cfg!(target_arch = "powerpc64") {
    Some((21, "powerpc64"))
} else if cfg!(target_arch = "s390x") {
    Some((22, "s390x"))
} else if cfg!(target_arch = "loongarch64") {
    Some((258, "loongarch64"))
} else {
    None
};

/// Why the bytes are not a complete shared library for this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// Not an ELF file at all.
    NotElf(String),
    /// A well-formed ELF file, but not something this host can load (another machine, an
    /// executable, an object file).
    Foreign(String),
    /// An ELF file cut short or with inconsistent headers: incomplete or damaged.
    Damaged(String),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::NotElf(s) | ElfError::Foreign(s) | ElfError::Damaged(s) => f.write_str(s),
        }
    }
}

/// Little-endian (or big-endian, per the file) field reader over a slice; every read is
/// bounds-checked by the caller's range checks and by `get`.
struct Reader<'a> {
    b: &'a [u8],
    le: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.b.get(at..at.checked_add(N)?)?.try_into().ok()
    }
    fn u16(&self, at: usize) -> Option<u16> {
        let a = self.bytes::<2>(at)?;
        Some(if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        })
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let a = self.bytes::<4>(at)?;
        Some(if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let a = self.bytes::<8>(at)?;
        Some(if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        })
    }
}

/// Checks that `b` is a complete ELF64 shared object for this machine: the header, every
/// program header and every `PT_LOAD` segment's file bytes lie inside `b`, and so does the
/// section header table (a linker writes it last, so a file cut anywhere fails here).
pub fn check(b: &[u8]) -> Result<(), ElfError> {
    let len = b.len() as u64;
    if b.len() < 4 && b"\x7fELF".starts_with(b) {
        // Empty, or the start of an ELF file: what a copy in progress looks like.
        return Err(ElfError::Damaged(format!(
            "the file is {len} bytes, shorter than an ELF header ({EHDR_LEN} bytes)"
        )));
    }
    if b.len() < 4 || b[..4] != *b"\x7fELF" {
        let start: Vec<String> = b.iter().take(4).map(|x| format!("{x:02x}")).collect();
        return Err(ElfError::NotElf(format!(
            "not an ELF file (it starts with the bytes {}, not 7f 45 4c 46)",
            start.join(" ")
        )));
    }
    if b.len() < EHDR_LEN {
        return Err(ElfError::Damaged(format!(
            "the file is {len} bytes, shorter than an ELF header ({EHDR_LEN} bytes)"
        )));
    }
    match b[4] {
        2 => {}
        1 => return Err(ElfError::Foreign("a 32-bit ELF file".into())),
        c => return Err(ElfError::Damaged(format!("ELF class byte {c} is invalid"))),
    }
    let le = match b[5] {
        1 => true,
        2 => false,
        d => {
            return Err(ElfError::Damaged(format!(
                "ELF data-encoding byte {d} is invalid"
            )))
        }
    };
    if le != cfg!(target_endian = "little") {
        return Err(ElfError::Foreign(format!(
            "a {}-endian ELF file, for another kind of machine",
            if le { "little" } else { "big" }
        )));
    }
    let r = Reader { b, le };
    let damaged = |s: String| Err(ElfError::Damaged(s));
    let (Some(e_type), Some(e_machine)) = (r.u16(16), r.u16(18)) else {
        return damaged("the ELF header is cut short".into());
    };
    match e_type {
        ET_DYN => {}
        ET_EXEC => {
            return Err(ElfError::Foreign(
                "an ELF executable, not a shared library".into(),
            ))
        }
        ET_REL => {
            return Err(ElfError::Foreign(
                "an ELF object file (.o), not a shared library".into(),
            ))
        }
        t => {
            return Err(ElfError::Foreign(format!(
                "an ELF file of type {t}, not a shared library"
            )))
        }
    }
    if let Some((want, arch)) = MACHINE {
        if e_machine != want {
            return Err(ElfError::Foreign(format!(
                "an ELF library for machine type {e_machine}, not for this {arch} host (type {want})"
            )));
        }
    }
    let (Some(phoff), Some(shoff), Some(phentsize), Some(phnum), Some(shentsize), Some(shnum)) = (
        r.u64(32),
        r.u64(40),
        r.u16(54),
        r.u16(56),
        r.u16(58),
        r.u16(60),
    ) else {
        return damaged("the ELF header is cut short".into());
    };
    if phnum == 0 || phnum == PN_XNUM {
        return damaged(format!("the ELF header gives {phnum} program headers"));
    }
    if usize::from(phentsize) != PHDR_LEN {
        return damaged(format!(
            "program headers of {phentsize} bytes (ELF64 uses {PHDR_LEN})"
        ));
    }
    let ph_end = phoff.checked_add(u64::from(phnum) * PHDR_LEN as u64);
    match ph_end {
        Some(end) if end <= len => {}
        _ => {
            return damaged(format!(
                "the program headers end at byte {}, past the file's {len} bytes",
                ph_end.map_or_else(|| "(overflow)".into(), |e| e.to_string())
            ))
        }
    }
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..usize::from(phnum) {
        // In bounds: checked against ph_end above.
        let at = phoff as usize + i * PHDR_LEN;
        let (Some(p_type), Some(off), Some(vaddr), Some(filesz), Some(memsz)) = (
            r.u32(at),
            r.u64(at + 8),
            r.u64(at + 16),
            r.u64(at + 32),
            r.u64(at + 40),
        ) else {
            return damaged(format!("program header {i} is cut short"));
        };
        let end = off.checked_add(filesz);
        if p_type != PT_LOAD && p_type != PT_DYNAMIC {
            continue;
        }
        let what = if p_type == PT_LOAD {
            format!("PT_LOAD segment {}", loads.len())
        } else {
            "the PT_DYNAMIC segment".to_string()
        };
        match end {
            Some(e) if e <= len => {}
            _ => {
                return damaged(format!(
                    "{what} ends at byte {}, past the file's {len} bytes",
                    end.map_or_else(|| "(overflow)".into(), |e| e.to_string())
                ))
            }
        }
        if filesz > memsz {
            return damaged(format!(
                "{what} has {filesz} bytes in the file but only {memsz} in memory"
            ));
        }
        if vaddr.checked_add(memsz).is_none() {
            return damaged(format!("{what} wraps the address space"));
        }
        if p_type == PT_LOAD {
            loads.push((vaddr, memsz));
        } else {
            dynamic = Some((vaddr, memsz));
        }
    }
    if loads.is_empty() {
        return damaged("no PT_LOAD segment: nothing to load".into());
    }
    if let Some((v, m)) = dynamic {
        if !loads.iter().any(|&(lv, lm)| v >= lv && v + m <= lv + lm) {
            return damaged("the PT_DYNAMIC segment lies outside every PT_LOAD segment".into());
        }
    }
    if shoff != 0 && shnum != 0 {
        let sh_end = u64::from(shnum)
            .checked_mul(u64::from(shentsize))
            .and_then(|n| n.checked_add(shoff));
        match sh_end {
            Some(e) if e <= len => {}
            _ => {
                return damaged(format!(
                    "the section header table ends at byte {}, past the file's {len} bytes",
                    sh_end.map_or_else(|| "(overflow)".into(), |e| e.to_string())
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed ELF64 shared object for this machine: header, two PT_LOADs, a
    /// PT_DYNAMIC inside the second, section headers at the end.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        b[18..20].copy_from_slice(&MACHINE.map_or(0, |m| m.0).to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[40..48].copy_from_slice(&(4096u64 - 2 * 64).to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&3u16.to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&2u16.to_le_bytes());
        let ph = |b: &mut Vec<u8>, i: usize, t: u32, off: u64, va: u64, fs: u64, ms: u64| {
            let at = 64 + i * 56;
            b[at..at + 4].copy_from_slice(&t.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&va.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&fs.to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&ms.to_le_bytes());
        };
        ph(&mut b, 0, PT_LOAD, 0, 0, 2048, 2048);
        ph(&mut b, 1, PT_LOAD, 2048, 0x10000, 1024, 8192);
        ph(&mut b, 2, PT_DYNAMIC, 2100, 0x10000 + 52, 100, 100);
        b
    }

    #[test]
    fn a_complete_image_passes() {
        assert_eq!(check(&image()), Ok(()));
    }

    #[test]
    fn every_cut_of_the_file_is_refused() {
        let b = image();
        for n in 0..b.len() {
            let e = check(&b[..n]).expect_err(&format!("cut at {n}"));
            assert!(matches!(e, ElfError::Damaged(_)), "cut at {n}: {e}");
        }
    }

    #[test]
    fn a_segment_past_the_end_is_named_with_its_bytes() {
        let mut b = image();
        let at = 64 + 56 + 32;
        b[at..at + 8].copy_from_slice(&999_999u64.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&999_999u64.to_le_bytes());
        let e = check(&b).unwrap_err().to_string();
        assert!(
            e.contains("PT_LOAD segment 1 ends at byte 1002047, past the file's 4096 bytes"),
            "{e}"
        );
    }

    #[test]
    fn foreign_and_non_elf_files_are_told_apart() {
        assert!(matches!(check(b"hello"), Err(ElfError::NotElf(_))));
        assert!(matches!(check(b"he"), Err(ElfError::NotElf(_))));
        let mut b = image();
        b[4] = 1;
        assert!(matches!(check(&b), Err(ElfError::Foreign(_))));
        let mut b = image();
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        assert!(matches!(check(&b), Err(ElfError::Foreign(_))));
        let mut b = image();
        b[18..20].copy_from_slice(&0xbeefu16.to_le_bytes());
        if MACHINE.is_some() {
            assert!(matches!(check(&b), Err(ElfError::Foreign(_))));
        }
    }

    #[test]
    fn absurd_offsets_do_not_overflow() {
        let mut b = image();
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(&b), Err(ElfError::Damaged(_))));
        let mut b = image();
        let at = 64 + 8;
        b[at..at + 8].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        assert!(matches!(check(&b), Err(ElfError::Damaged(_))));
    }
}
