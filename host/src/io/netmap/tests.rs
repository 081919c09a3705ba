//! The ring walkers on hand-built in-memory images: layout, wrap-around, lookahead,
//! corruption (every bad field is an error, never a panic or a read out of the region) and
//! the TX side.

use netmap_sys::netmap::NS_REPORT;

use super::image::testing::*;
use super::image::*;
use super::layout::*;
use super::*;

fn collect(mem: &mut NetmapMem, ring: usize) -> Result<Vec<(Vec<u8>, u32)>, RingError> {
    let mut out = Vec::new();
    mem.ring_mut(ring)?
        .rx_batch_indexed(|f, i| out.push((f.to_vec(), i)))?;
    Ok(out)
}

#[test]
fn layout_matches_netmap_h() {
    // Also asserted at compile time; kept here so the numbers show in test output.
    assert_eq!(SLOT_LEN, 16);
    assert_eq!(RING_HEADER_LEN, 256);
    assert_eq!(RING_SLOTS, 256);
    assert_eq!((RING_HEAD, RING_CUR, RING_TAIL), (20, 24, 28));
    assert_eq!(IF_RING_OFS, 56);
}

#[test]
fn walks_slots_and_releases() {
    let mut img = Image::new(2, 8, 128);
    img.produce(1, b"hello");
    img.produce(1, b"world!");
    img.produce(0, b"zero");
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!(mem.rx_rings(), 2);
    assert_eq!(mem.ring(1).unwrap().available().unwrap(), 2);
    let got = collect(&mut mem, 1).unwrap();
    assert_eq!(got, vec![(b"hello".to_vec(), 0), (b"world!".to_vec(), 1)]);
    let got0 = collect(&mut mem, 0).unwrap();
    assert_eq!(got0, vec![(b"zero".to_vec(), 0)]);
    drop(mem);
    let r1 = img.layout.ring_offsets[1];
    assert_eq!(img.u32_at(r1 + RING_HEAD), 2);
    assert_eq!(img.u32_at(r1 + RING_CUR), 2);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!(collect(&mut mem, 1).unwrap(), vec![]);
}

#[test]
fn wraps_around_non_power_of_two() {
    let mut img = Image::new(1, 5, 64);
    let mut next = 0u32;
    let mut seen = Vec::new();
    for round in 0..7 {
        // Fill up to 4 (num_slots - 1) frames per round, which moves head/tail round the ring.
        let k = 1 + round % 4;
        for _ in 0..k {
            img.produce(0, &next.to_le_bytes());
            next += 1;
        }
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        for (f, _) in collect(&mut mem, 0).unwrap() {
            seen.push(u32::from_le_bytes(f.try_into().unwrap()));
        }
    }
    assert_eq!(seen, (0..next).collect::<Vec<_>>());
}

#[test]
fn lookahead_shows_frames_ahead_and_hands_each_over_once() {
    // 11 slots, batches of up to 10 frames, round after round across the wrap.
    let mut img = Image::new(1, 11, 64);
    let mut next = 0u32;
    let mut frames = Vec::new();
    for round in 0..9u32 {
        let k = 1 + (round * 3) % 10;
        for _ in 0..k {
            img.produce(0, &next.to_le_bytes());
            next += 1;
        }
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let mut steps = Vec::new();
        let n = mem
            .ring_mut(0)
            .unwrap()
            .rx_batch_lookahead(|s| {
                steps.push(match s {
                    Step::Far(f) => ('F', u32::from_le_bytes(f.try_into().unwrap())),
                    Step::Near(f) => ('N', u32::from_le_bytes(f.try_into().unwrap())),
                    Step::Frame(f, _) => ('P', u32::from_le_bytes(f.try_into().unwrap())),
                })
            })
            .unwrap();
        assert_eq!(n, k as usize);
        let processed: Vec<u32> = steps.iter().filter(|s| s.0 == 'P').map(|s| s.1).collect();
        let first = next - k;
        assert_eq!(processed, (first..next).collect::<Vec<_>>());
        frames.extend(processed);
        // Every frame was hinted (far and near) before it was processed.
        for p in first..next {
            let at = steps.iter().position(|s| *s == ('P', p)).unwrap();
            for kind in ['F', 'N'] {
                let hint = steps.iter().position(|s| *s == (kind, p));
                assert!(hint.is_some_and(|h| h < at), "{kind} {p}: {steps:?}");
            }
        }
        // The lookahead is bounded: a hint is never more than FAR frames early.
        for (i, s) in steps.iter().enumerate() {
            if s.0 != 'P' {
                let done = steps[..i].iter().filter(|x| x.0 == 'P').count() as u32;
                assert!(s.1 - first <= done + LOOKAHEAD_FAR, "{steps:?}");
            }
        }
    }
    assert_eq!(frames, (0..next).collect::<Vec<_>>());
}

#[test]
fn legacy_and_auto_host_rings() {
    // An API-11 style netmap_if: 1 TX ring, 1 host TX ring, 1 RX ring; fields read as 0.
    let mut img = Image::new(1, 4, 64);
    let nifp = img.layout.if_offset;
    let ring = img.layout.ring_offsets[0] as i64;
    // ring_ofs[] = [tx0, host tx, rx0, host rx]; room exists (the rings start 128-aligned).
    img.set_u32(nifp + IF_TX_RINGS, 1);
    img.set_i64(nifp + IF_RING_OFS, ring);
    img.set_i64(nifp + IF_RING_OFS + 8, ring);
    img.set_i64(nifp + IF_RING_OFS + 16, ring);
    img.set_i64(nifp + IF_RING_OFS + 24, ring);
    img.produce(0, b"x");
    let mut mem = img.mem(HostRings::Auto).unwrap();
    assert_eq!(mem.tx_rings(), 1);
    assert_eq!(collect(&mut mem, 0).unwrap().len(), 1);
}

#[test]
fn unregistered_ring_is_reported() {
    let mut img = Image::new(3, 4, 64);
    let nifp = img.layout.if_offset;
    img.set_i64(nifp + IF_RING_OFS + 8, 0);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!(
        mem.rx_batch(1, |_| {}),
        Err(RingError::NotRegistered { ring: 1 })
    );
    assert_eq!(
        mem.rx_batch(3, |_| {}),
        Err(RingError::NoSuchRing { ring: 3, rings: 3 })
    );
    assert_eq!(mem.rx_batch(2, |_| {}), Ok(0));
}

fn refused(img: &mut Image) -> String {
    img.mem(HostRings::FromIf).unwrap_err().to_string()
}

#[test]
fn corrupt_headers_are_refused() {
    let fresh = || Image::new(2, 8, 128);
    let mut img = fresh();
    let r0 = img.layout.ring_offsets[0];
    let nifp = img.layout.if_offset;

    img.set_u32(r0 + RING_NUM_SLOTS, 0);
    assert!(
        refused(&mut img).contains("num_slots = 0"),
        "{}",
        refused(&mut img)
    );

    let mut img = fresh();
    img.set_u32(r0 + RING_NUM_SLOTS, 1 << 19);
    assert!(refused(&mut img).contains("ring 0 slots"));

    let mut img = fresh();
    img.set_u32(r0 + RING_TAIL, 8);
    assert!(refused(&mut img).contains("tail = 8"));

    let mut img = fresh();
    img.set_u32(r0 + RING_HEAD, 9);
    assert!(refused(&mut img).contains("head = 9"));

    let mut img = fresh();
    img.set_u32(r0 + RING_BUF_SIZE, 0);
    assert!(refused(&mut img).contains("nr_buf_size"));

    let mut img = fresh();
    img.set_i64(nifp + IF_RING_OFS, 1 << 40);
    assert!(refused(&mut img).contains("outside"));

    let mut img = fresh();
    img.set_i64(nifp + IF_RING_OFS, -64);
    assert!(refused(&mut img).contains("outside"));

    let mut img = fresh();
    img.set_i64(nifp + IF_RING_OFS, r0 as i64 + 4);
    assert!(refused(&mut img).contains("aligned"));

    let mut img = fresh();
    img.set_i64(r0 + RING_BUF_OFS, i64::MAX);
    assert!(refused(&mut img).contains("buffers"));

    let mut img = fresh();
    img.set_u32(nifp + IF_RX_RINGS, u32::MAX);
    assert!(refused(&mut img).contains("ni_rx_rings"));

    let mut img = fresh();
    img.set_u32(nifp + IF_RX_RINGS, 1000);
    assert!(refused(&mut img).contains("ring_ofs"));

    let mut img = fresh();
    let len = img.layout.total_len;
    let base = img.words.as_mut_ptr().cast::<u8>();
    // SAFETY: the region is inside the Vec; a misaligned base is refused before any read.
    #[allow(unsafe_code)]
    let err = unsafe { NetmapMem::from_raw(base.add(1), len - 1, 0, HostRings::FromIf) };
    assert!(matches!(err, Err(RingError::Misaligned { .. })));
}

#[test]
fn corrupt_slots_and_tail_are_errors_not_ub() {
    let mut img = Image::new(1, 8, 128);
    img.produce(0, b"good");
    img.produce(0, b"bad-index");
    img.produce(0, b"later");
    let so = img.layout.slot_offset(0, 1);
    img.set_u32(so + SLOT_BUF_IDX, 1_000_000);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let mut got = Vec::new();
    let err = mem.rx_batch(0, |f| got.push(f.to_vec())).unwrap_err();
    assert_eq!(got, vec![b"good".to_vec()]);
    assert!(
        err.to_string().contains("slot 1 buf_idx = 1000000"),
        "{err}"
    );
    // The good frame was released, the bad slot stays at head.
    assert_eq!(mem.ring(0).unwrap().available().unwrap(), 2);
    drop(mem);

    let mut img = Image::new(1, 8, 128);
    img.produce(0, b"x");
    let so = img.layout.slot_offset(0, 0);
    put(img.bytes(), so + SLOT_LEN_FIELD, &129u16.to_ne_bytes());
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let err = mem.rx_batch(0, |_| {}).unwrap_err();
    assert!(err.to_string().contains("len = 129"), "{err}");
    drop(mem);

    // tail corrupted after validation.
    let mut img = Image::new(1, 8, 128);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let r0 = img.layout.ring_offsets[0];
    img.set_u32(r0 + RING_TAIL, 77);
    let err = mem.rx_batch(0, |_| {}).unwrap_err();
    assert!(err.to_string().contains("tail = 77"), "{err}");
}

#[test]
fn shm_layout_has_rx_rings_only() {
    // The shm file format: these offsets are what ShmRegion writes and reads.
    let l = ImageLayout::new(4096, 2, 8, 64).unwrap();
    assert_eq!(l, ImageLayout::with_tx(4096, 0, 2, 8, 64).unwrap());
    assert_eq!(l.tx_rings, 0);
    assert!(l.tx_ring_offsets.is_empty());
    assert_eq!(l.if_offset, 4096);
    assert_eq!(l.ring_offsets, vec![4224, 4608]);
    assert_eq!(l.bufs_offset, 8192);
    assert_eq!(l.total_len, 8192 + 2 * 8 * 64);
    let mut img = Image::new(2, 8, 64);
    assert_eq!(img.u32_at(IF_TX_RINGS), 0);
    let mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!((mem.tx_rings(), mem.rx_rings()), (0, 2));
    assert_eq!(
        mem.tx_ring(0).unwrap_err(),
        RingError::NoSuchTxRing { ring: 0, rings: 0 }
    );
}

#[test]
fn tx_frames_land_in_their_slots_and_publish() {
    let mut img = Image::with_tx(2, 1, 8, 128);
    img.produce(0, b"rx frame");
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!((mem.tx_rings(), mem.rx_rings()), (2, 1));
    let tx = mem.tx_ring_mut(1).unwrap();
    assert_eq!(tx.index(), 1);
    assert_eq!(
        (tx.num_slots(), tx.buf_size(), tx.max_frame()),
        (8, 128, 128)
    );
    // An empty TX ring: every slot but the one the kernel keeps is free.
    assert_eq!(tx.space().unwrap(), 7);
    assert_eq!(tx.in_flight().unwrap(), 0);
    assert_eq!(tx.push(b"hello"), Ok(true));
    assert_eq!(tx.push(b"world!"), Ok(true));
    assert_eq!(tx.pending(), 2);
    assert_eq!(tx.space().unwrap(), 5);
    drop(mem);
    // Not published yet: the kernel sees nothing.
    let r1 = img.layout.tx_ring_offsets[1];
    assert_eq!(img.u32_at(r1 + RING_HEAD), 0);
    assert_eq!(img.transmit(1), Vec::<Vec<u8>>::new());

    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(1).unwrap();
    assert_eq!(tx.push(b"hello"), Ok(true));
    assert_eq!(tx.push(b"world!"), Ok(true));
    assert_eq!(tx.publish(), 2);
    assert_eq!(tx.publish(), 0);
    assert_eq!(tx.pending(), 0);
    assert_eq!(tx.in_flight().unwrap(), 2);
    // The RX side of the same image is untouched.
    let got = collect(&mut mem, 0).unwrap();
    assert_eq!(got, vec![(b"rx frame".to_vec(), 0)]);
    drop(mem);
    assert_eq!(img.u32_at(r1 + RING_HEAD), 2);
    assert_eq!(img.u32_at(r1 + RING_CUR), 2);
    let r0 = img.layout.tx_ring_offsets[0];
    assert_eq!(img.u32_at(r0 + RING_HEAD), 0);
    for (s, frame) in [(0usize, &b"hello"[..]), (1, &b"world!"[..])] {
        let so = img.layout.tx_slot_offset(1, s);
        // TX ring 1's slots carry buffers 8..16.
        assert_eq!(img.u32_at(so + SLOT_BUF_IDX), 8 + s as u32);
        assert_eq!(usize::from(img.u16_at(so + SLOT_LEN_FIELD)), frame.len());
        let bo = img.layout.buf_offset(8 + s);
        assert_eq!(&img.bytes()[bo..bo + frame.len()], frame);
    }
    // The last slot of the batch asks for a completion report, as pkt-gen does.
    let flags = |img: &mut Image, s| img.u16_at(img.layout.tx_slot_offset(1, s) + SLOT_FLAGS);
    assert_eq!((flags(&mut img, 0), flags(&mut img, 1)), (0, NS_REPORT));
    assert_eq!(img.transmit(1), vec![b"hello".to_vec(), b"world!".to_vec()]);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(1).unwrap();
    assert_eq!(tx.in_flight().unwrap(), 0);
    assert_eq!(tx.space().unwrap(), 7);
}

#[test]
fn tx_full_ring_refuses_until_the_kernel_gives_slots_back() {
    let mut img = Image::with_tx(1, 0, 4, 64);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(0).unwrap();
    let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
    assert_eq!(tx.push_batch(&refs), Ok(3));
    assert_eq!(tx.push(&frames[3]), Ok(false));
    assert_eq!(tx.publish(), 3);
    // head == tail: full until the kernel transmits.
    assert_eq!(tx.space(), Ok(0));
    assert_eq!(tx.push(&frames[3]), Ok(false));
    assert_eq!(tx.in_flight(), Ok(3));
    drop(mem);
    let r = img.layout.tx_ring_offsets[0];
    assert_eq!(img.u32_at(r + RING_HEAD), img.u32_at(r + RING_TAIL));
    assert_eq!(img.transmit(0), frames[..3].to_vec());
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(0).unwrap();
    assert_eq!(tx.space(), Ok(3));
    assert_eq!(tx.push_batch(&refs[3..]), Ok(2));
    tx.publish();
    drop(mem);
    assert_eq!(img.transmit(0), frames[3..].to_vec());
}

#[test]
fn tx_wraps_around_non_power_of_two() {
    let mut img = Image::with_tx(1, 1, 5, 64);
    let mut next = 0u32;
    let mut sent = Vec::new();
    for round in 0..9 {
        // 1 to 4 (num_slots - 1) frames per round: head and tail go round the ring.
        let k = 1 + round % 4;
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(0).unwrap();
        assert_eq!(tx.space(), Ok(4));
        for _ in 0..k {
            assert_eq!(tx.push(&next.to_le_bytes()), Ok(true));
            next += 1;
        }
        assert_eq!(tx.publish(), k);
        assert_eq!(tx.in_flight(), Ok(k));
        drop(mem);
        for f in img.transmit(0) {
            sent.push(u32::from_le_bytes(f.try_into().unwrap()));
        }
    }
    assert_eq!(sent, (0..next).collect::<Vec<_>>());
    // The ring went round several times: head is where the frames sent put it.
    let r = img.layout.tx_ring_offsets[0];
    assert_eq!(img.u32_at(r + RING_HEAD), next % 5);
}

#[test]
fn tx_wraps_within_one_ring_view() {
    // The same, with one long-lived walker and the kernel moving tail behind it.
    let mut img = Image::with_tx(1, 0, 3, 64);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let r = img.layout.tx_ring_offsets[0];
    let mut sent = Vec::new();
    for i in 0..7u8 {
        let tx = mem.tx_ring_mut(0).unwrap();
        assert_eq!(tx.push(&[i; 3]), Ok(true));
        assert_eq!(tx.publish(), 1);
        // Play the kernel: slot `i % 3` sent, tail moves to head - 1.
        let head = img.u32_at(r + RING_HEAD);
        assert_eq!(head, u32::from(i + 1) % 3);
        let so = img.layout.tx_slot_offset(0, usize::from(i % 3));
        let idx = img.u32_at(so + SLOT_BUF_IDX) as usize;
        let bo = img.layout.buf_offset(idx);
        sent.push(img.bytes()[bo]);
        img.set_u32(r + RING_TAIL, (head + 2) % 3);
    }
    assert_eq!(mem.tx_ring_mut(0).unwrap().in_flight(), Ok(0));
    assert_eq!(sent, (0..7).collect::<Vec<u8>>());
}

#[test]
fn tx_frame_larger_than_a_buffer_is_refused() {
    let mut img = Image::with_tx(1, 0, 4, 128);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(0).unwrap();
    let err = tx.push(&[0u8; 129]).unwrap_err();
    assert_eq!(
        err,
        RingError::TooLarge {
            ring: 0,
            len: 129,
            max: 128
        }
    );
    assert!(err.to_string().contains("nr_buf_size"), "{err}");
    assert_eq!(tx.pending(), 0);
    assert_eq!(tx.push(&[0u8; 128]), Ok(true));
}

#[test]
fn tx_corrupt_headers_are_refused() {
    let fresh = || Image::with_tx(2, 1, 8, 128);
    let mut img = fresh();
    let t1 = img.layout.tx_ring_offsets[1];
    let nifp = img.layout.if_offset;

    img.set_u32(t1 + RING_HEAD, 9);
    assert!(
        refused(&mut img).contains("TX head = 9"),
        "{}",
        refused(&mut img)
    );

    let mut img = fresh();
    img.set_u32(t1 + RING_TAIL, 8);
    assert!(refused(&mut img).contains("TX tail = 8"));

    let mut img = fresh();
    img.set_u32(t1 + RING_NUM_SLOTS, 1);
    assert!(refused(&mut img).contains("TX num_slots = 1"));

    let mut img = fresh();
    img.set_u32(t1 + RING_BUF_SIZE, 0);
    assert!(refused(&mut img).contains("TX nr_buf_size"));

    let mut img = fresh();
    img.set_i64(nifp + IF_RING_OFS + 8, 1 << 40);
    let e = refused(&mut img);
    assert!(
        e.contains("TX ring 1 header") && e.contains("outside"),
        "{e}"
    );

    let mut img = fresh();
    img.set_i64(t1 + RING_BUF_OFS, i64::MIN);
    assert!(refused(&mut img).contains("TX ring 1 buffers"));

    let mut img = fresh();
    img.set_u32(nifp + IF_TX_RINGS, 5000);
    assert!(refused(&mut img).contains("ni_tx_rings"));

    // An unregistered TX ring is kept as such.
    let mut img = fresh();
    img.set_i64(nifp + IF_RING_OFS, 0);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!(
        mem.tx_ring_mut(0).unwrap_err(),
        RingError::TxNotRegistered { ring: 0 }
    );
    assert_eq!(
        mem.tx_ring(2).unwrap_err(),
        RingError::NoSuchTxRing { ring: 2, rings: 2 }
    );
    assert!(mem.tx_ring(1).is_ok());
    assert_eq!(mem.into_tx_rings().len(), 2);
}

#[test]
fn tx_corrupt_tail_and_buf_idx_are_errors_not_ub() {
    // tail beyond the ring, after validation.
    let mut img = Image::with_tx(1, 0, 8, 128);
    let r = img.layout.tx_ring_offsets[0];
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    img.set_u32(r + RING_TAIL, 99);
    let err = mem.tx_ring_mut(0).unwrap().space().unwrap_err();
    assert!(err.to_string().contains("TX tail = 99"), "{err}");
    drop(mem);

    // tail moved back among the slots written since the last publish.
    let mut img = Image::with_tx(1, 0, 4, 128);
    let r = img.layout.tx_ring_offsets[0];
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(0).unwrap();
    assert_eq!(tx.push(b"a"), Ok(true));
    assert_eq!(tx.push(b"b"), Ok(true));
    img.set_u32(r + RING_TAIL, 1);
    let tx = mem.tx_ring_mut(0).unwrap();
    let err = tx.space().unwrap_err();
    assert!(err.to_string().contains("TX tail = 1"), "{err}");
    assert!(err.to_string().contains("written since"), "{err}");
    drop(mem);

    // head == tail with nothing written is a full ring, not corruption.
    let mut img = Image::with_tx(1, 0, 4, 128);
    let r = img.layout.tx_ring_offsets[0];
    img.set_u32(r + RING_TAIL, 0);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!(mem.tx_ring_mut(0).unwrap().push(b"x"), Ok(false));
    drop(mem);

    // A slot naming a buffer past the region: refused, nothing written, cur stays.
    let mut img = Image::with_tx(1, 0, 8, 128);
    let so = img.layout.tx_slot_offset(0, 0);
    img.set_u32(so + SLOT_BUF_IDX, 1_000_000);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(0).unwrap();
    let err = tx.push(b"frame").unwrap_err();
    assert!(
        err.to_string().contains("TX slot 0 buf_idx = 1000000"),
        "{err}"
    );
    assert_eq!(tx.pending(), 0);
    assert_eq!(tx.publish(), 0);
    drop(mem);
    assert_eq!(img.u16_at(so + SLOT_LEN_FIELD), 0);

    // The last whole buffer of the region is in bounds.
    let mut img = Image::with_tx(1, 0, 4, 64);
    let last = (img.layout.total_len - img.layout.bufs_offset) / 64 - 1;
    let so = img.layout.tx_slot_offset(0, 0);
    img.set_u32(so + SLOT_BUF_IDX, last as u32);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let tx = mem.tx_ring_mut(0).unwrap();
    assert_eq!(tx.push(&[9u8; 64]), Ok(true));
    tx.publish();
    drop(mem);
    assert_eq!(img.transmit(0), vec![vec![9u8; 64]]);
}

#[test]
fn tx_frame_read_from_the_slot_buffer_is_refused() {
    // A frame lent from this very region (an RX buffer, say) whose TX slot names the
    // same buffer: writing would change a live shared borrow, so it is refused.
    let mut img = Image::with_tx(1, 1, 4, 64);
    let so = img.layout.tx_slot_offset(0, 0);
    let rx_buf = 4; // RX ring 0, slot 0.
    img.set_u32(so + SLOT_BUF_IDX, rx_buf);
    let bo = img.layout.buf_offset(rx_buf as usize);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    let base = img.words.as_mut_ptr().cast::<u8>();
    // SAFETY: bo + 16 is inside the image, which outlives this slice; nothing writes
    // those bytes while it lives (the push below is refused).
    #[allow(unsafe_code)]
    let lent = unsafe { std::slice::from_raw_parts(base.add(bo + 8), 16) };
    let tx = mem.tx_ring_mut(0).unwrap();
    let err = tx.push(lent).unwrap_err();
    assert!(
        err.to_string().contains("must not name the buffer"),
        "{err}"
    );
    assert_eq!(tx.pending(), 0);
}

#[test]
fn buffer_at_end_of_region_is_in_bounds() {
    let mut img = Image::new(1, 4, 64);
    let last = (img.layout.total_len - img.layout.bufs_offset) / 64 - 1;
    img.produce(0, &[7u8; 64]);
    let so = img.layout.slot_offset(0, 0);
    img.set_u32(so + SLOT_BUF_IDX, last as u32);
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    assert_eq!(mem.rx_batch(0, |f| assert_eq!(f.len(), 64)).unwrap(), 1);
}

#[test]
fn corrupt_errors_name_the_netmap_if_or_the_ring_and_its_direction() {
    let mut img = Image::with_tx(2, 1, 8, 128);
    let nifp = img.layout.if_offset;
    img.set_u32(nifp + IF_TX_RINGS, 5000);
    let e = img.mem(HostRings::FromIf).unwrap_err();
    assert!(
        matches!(&e, RingError::Corrupt { ring: RingId::If, field, .. } if field == "ni_tx_rings"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("corrupt netmap_if: ni_tx_rings = 5000 is out of range (at most 1024)"),
        "{e}"
    );

    let mut img = Image::with_tx(2, 1, 8, 128);
    let t1 = img.layout.tx_ring_offsets[1];
    img.set_u32(t1 + RING_HEAD, 9);
    let e = img.mem(HostRings::FromIf).unwrap_err();
    assert!(
        matches!(&e, RingError::Corrupt { ring, field, value: 9, .. }
            if *ring == RingId::tx(1) && field == "head"),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(
            "corrupt netmap ring 1: TX head = 9 is out of range (must be < num_slots = 8)"
        ),
        "{e}"
    );

    let mut img = Image::new(1, 8, 128);
    let r0 = img.layout.ring_offsets[0];
    let mut mem = img.mem(HostRings::FromIf).unwrap();
    img.set_u32(r0 + RING_TAIL, 77);
    let e = mem.rx_batch(0, |_| {}).unwrap_err();
    assert!(
        matches!(&e, RingError::Corrupt { ring, .. } if *ring == RingId::rx(0)),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("corrupt netmap ring 0: tail = 77"),
        "{e}"
    );
}
