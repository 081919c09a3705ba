//! The defragmenter allocates nothing for a frame that is not a fragment (measured with a
//! counting global allocator), and does allocate for fragments (so the count is real).
//!
//! A test binary of its own: the allocator counts every thread, so nothing else may run.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use flowpeek::ip::{Config, Defragmenter, Outcome};
use flowpeek::wire::{internet_checksum, LinkType};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn ethernet_v4(flags: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 7, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend((0..payload).map(|i| i as u8));
    f
}

fn ethernet_v6_tcp() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 40, 6, 64]);
    f.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0; 40]);
    f[14 + 40 + 12] = 0x50;
    f
}

#[test]
fn no_allocation_for_frames_that_are_not_fragments() {
    let mut d = Defragmenter::new(Config::default());
    let frames = [
        ethernet_v4(0x4000, 40),
        ethernet_v4(0, 1400),
        ethernet_v6_tcp(),
        vec![0u8; 60],
    ];
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut n = 0;
    for _ in 0..10_000 {
        for f in &frames {
            n += u32::from(matches!(
                d.push(LinkType::Ethernet, f, 1),
                Outcome::NotFragment
            ));
        }
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(n, 40_000);
    assert_eq!(after - before, 0, "allocations on the non-fragmented path");

    // Fragments do allocate (the counter works).
    let frag = ethernet_v4(0x2000, 64);
    assert_eq!(d.push(LinkType::Ethernet, &frag, 1), Outcome::Held);
    assert!(ALLOCS.load(Ordering::Relaxed) > after);
}
