//! Fuzz the netmap/shm ring walker (`flowpeek::io::netmap::NetmapMem`) and the shm region
//! header checks (`flowpeek::io::shm::ShmRegion::open_path`) with hostile memory images.
//!
//! A valid template image is made once with `ShmRegion::create` (2 rings x 8 slots x 64-byte
//! buffers, a few frames pushed) and copied out of `/dev/shm`. Byte 0 of the input picks:
//!
//! - mode 0/1 (most inputs): the template in an 8-aligned heap buffer, patched with the input
//!   (6-byte patches: u16 offset, u32 value stored at that offset rounded down to 4); the rest
//!   of the patches are applied between batches, as a producer that breaks the ring protocol
//!   would. `NetmapMem::from_raw` then `rx_batch` on every ring, a few times.
//! - mode 2: the input itself is the image (if_offset from its first 4 bytes).
//! - mode 3: the patched template is written to a file and opened with `ShmRegion::open_path`
//!   (the header checks), then each ring is walked.
//!
//! Every frame handed out must lie inside the image; any read outside it is a heap overflow
//! that ASan reports. Errors are expected; panics are bugs.
// Built by cargo-fuzz: a libFuzzer target. Included by host/tests/fuzz_regressions.rs (built
// with cfg(test)): `run` alone, replayed over host/fuzz/regressions/shm_ring/.
#![cfg_attr(not(test), no_main)]

use std::sync::OnceLock;

use flowpeek::io::netmap::{HostRings, NetmapMem};
use flowpeek::io::shm::ShmRegion;

/// (image bytes, netmap_if offset)
fn template() -> &'static (Vec<u8>, usize) {
    static T: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    T.get_or_init(|| {
        let name = format!("flowpeek-fuzz-shmring-{}", std::process::id());
        let mut prod = ShmRegion::create(&name, 2, 8, 64).expect("create the template region");
        for i in 0..5u8 {
            let frame: Vec<u8> = (0..(20 + usize::from(i) * 9) as u8).collect();
            let _ = prod.push(usize::from(i % 2), &frame);
        }
        let bytes = std::fs::read(prod.region().path()).expect("read the template region");
        let if_off = u64::from_ne_bytes(bytes[56..64].try_into().unwrap()) as usize;
        drop(prod); // removes the file
        (bytes, if_off)
    })
}

/// A heap buffer with 8-byte alignment holding exactly `len` meaningful bytes; the
/// allocation is rounded up to 8, so ASan catches reads beyond `len` rounded up.
struct Image {
    words: Vec<u64>,
    len: usize,
}

impl Image {
    fn new(bytes: &[u8]) -> Image {
        let mut words = vec![0u64; bytes.len().div_ceil(8).max(1)];
        // SAFETY: `words` holds at least `bytes.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                words.as_mut_ptr().cast::<u8>(),
                bytes.len(),
            );
        }
        Image {
            words,
            len: bytes.len(),
        }
    }
    fn base(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast::<u8>()
    }
    fn range(&self) -> (usize, usize) {
        let b = self.words.as_ptr() as usize;
        (b, b + self.len)
    }
    fn patch(&mut self, p: &[u8]) {
        if self.len < 4 {
            return;
        }
        let off = usize::from(u16::from_le_bytes([p[0], p[1]]));
        // Concentrate on the first 8 KiB after the 4 KiB shm header (netmap_if, rings,
        // slots), with a quarter of the patches anywhere.
        let off = if off & 0xc000 == 0 {
            off % self.len
        } else {
            (4096 + off % 8192) % self.len
        };
        let off = (off & !3).min(self.len - 4);
        let v = [p[2], p[3], p[4], p[5]];
        // SAFETY: off + 4 <= len, inside the buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), self.base().add(off), 4);
        }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the buffer holds `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

fn walk(mem: &mut NetmapMem, img: &mut Image, patches: &mut std::slice::ChunksExact<'_, u8>) {
    let (lo, hi) = img.range();
    for _round in 0..4 {
        for r in 0..mem.rx_rings() {
            let _ = mem.rx_batch(r, |frame| {
                let s = frame.as_ptr() as usize;
                assert!(s >= lo && s + frame.len() <= hi, "frame outside the image");
                // Touch every byte (ASan checks each access).
                let mut x = 0u8;
                for b in frame {
                    x ^= *b;
                }
                std::hint::black_box(x);
            });
        }
        // The "producer" scribbles between batches.
        for _ in 0..2 {
            if let Some(p) = patches.next() {
                img.patch(p);
            }
        }
    }
}

const HOSTS: [HostRings; 3] = [HostRings::FromIf, HostRings::Legacy, HostRings::Auto];

#[cfg(not(test))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

/// The target's body: the fuzz target and the regression test (`host/tests/fuzz_regressions.rs`)
/// call it.
pub fn run(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let host = HOSTS[usize::from(pick >> 2) % 3];
    match pick & 3 {
        0 | 1 => {
            let (tpl, if_off) = template();
            let mut img = Image::new(tpl);
            let mut patches = rest.chunks_exact(6);
            // Up to 8 patches before validation; the rest come during the walk.
            for _ in 0..(usize::from(pick >> 4) % 9) {
                if let Some(p) = patches.next() {
                    img.patch(p);
                }
            }
            let len = img.len;
            // SAFETY: the image is readable and writable for `len` bytes and outlives `mem`.
            let res = unsafe { NetmapMem::from_raw(img.base(), len, *if_off, host) };
            if let Ok(mut mem) = res {
                walk(&mut mem, &mut img, &mut patches);
            }
        }
        2 => {
            if rest.len() < 4 {
                return;
            }
            let if_off = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let mut img = Image::new(&rest[4..]);
            let len = img.len;
            let mut none = [].chunks_exact(6);
            // SAFETY: as above.
            let res = unsafe { NetmapMem::from_raw(img.base(), len, if_off, host) };
            if let Ok(mut mem) = res {
                walk(&mut mem, &mut img, &mut none);
            }
        }
        _ => {
            let (tpl, _) = template();
            let mut img = Image::new(tpl);
            let mut patches = rest.chunks_exact(6);
            for p in patches.by_ref() {
                img.patch(p);
            }
            // A 1-in-8 chance of a truncated file.
            let cut = if pick & 0xe0 == 0xe0 {
                usize::from(rest.first().copied().unwrap_or(0)) * 97 % img.len
            } else {
                img.len
            };
            let path = std::env::temp_dir()
                .join(format!("flowpeek-fuzz-shmring-open-{}", std::process::id()));
            std::fs::write(&path, &img.bytes()[..cut]).unwrap();
            let opened = ShmRegion::open_path(&path);
            let _ = std::fs::remove_file(&path);
            if let Ok(mut cons) = opened {
                for _ in 0..3 {
                    for r in 0..cons.rings() {
                        let _ = cons.rx_batch(r, |frame| {
                            std::hint::black_box(frame.iter().fold(0u8, |a, b| a ^ b));
                        });
                    }
                }
            }
        }
    }
}
