//! The ABI's numbers, pinned: plugins already built depend on every value here, so a test
//! failing in this file means an incompatible ABI, not a test to update.

use super::*;
use crate::abi::{detail, status};

/// Checks every (name, code) pair of `T` against `golden`, in code order, then that each
/// code decodes back to its value and that every other code in `probe` is refused.
fn pinned<T, R>(golden: &[(&str, R)], all: &[T], name: fn(T) -> &'static str, code: fn(T) -> R)
where
    T: Copy + PartialEq + std::fmt::Debug + TryFrom<R, Error = UnknownCode>,
    R: Copy + PartialEq + std::fmt::Debug,
{
    let got: Vec<(&str, R)> = all.iter().map(|&v| (name(v), code(v))).collect();
    assert_eq!(got, golden, "the ABI's numbering changed");
    for &v in all {
        assert_eq!(T::try_from(code(v)), Ok(v), "{v:?} does not round-trip");
    }
}

/// Every code in `lo..=hi` that is not in `known` is refused with an error naming it.
fn refuses<T: TryFrom<R, Error = UnknownCode> + std::fmt::Debug, R: Copy + Into<i64>>(
    known: &[R],
    probe: impl IntoIterator<Item = R>,
) {
    let known: Vec<i64> = known.iter().map(|&r| r.into()).collect();
    for c in probe {
        if known.contains(&c.into()) {
            continue;
        }
        let e = T::try_from(c).expect_err("an unknown code was accepted");
        assert_eq!(e.code, c.into());
        assert!(e.to_string().contains(&c.into().to_string()), "{e}");
    }
}

#[test]
fn sides() {
    pinned(
        &[("cli", 0u8), ("svr", 1)],
        &Side::ALL,
        Side::short_name,
        Side::code,
    );
    refuses::<Side, u8>(&[0, 1], 0..=u8::MAX);
    assert_eq!(SIDE_BOTH, 2);
    assert_eq!(Side::code_of(None), 2);
    assert_eq!(Side::code_of(Some(Side::Server)), 1);
    assert_eq!(Side::from_code_or_both(2), Ok(None));
    assert_eq!(Side::from_code_or_both(0), Ok(Some(Side::Client)));
    assert!(Side::from_code_or_both(3).is_err());
    assert_eq!(Side::Client.peer(), Side::Server);
    assert_eq!(Side::Server.index(), 1);
}

#[test]
fn hooks() {
    pinned(
        &[("snd", 0u8), ("rcv", 1), ("null", 2)],
        &Hook::ALL,
        Hook::short_name,
        Hook::code,
    );
    refuses::<Hook, u8>(&[0, 1, 2], 0..=u8::MAX);
}

#[test]
fn events() {
    pinned(
        &[
            ("PKT_IN", 0u32),
            ("CONN_START", 1),
            ("CONN_NEW_DATA", 2),
            ("REXMIT", 3),
            ("TCP_STATE_CHANGE", 4),
            ("ERROR", 5),
            ("TIMEOUT", 6),
            ("CONN_END", 7),
            ("ORPHAN", 8),
        ],
        &BuiltinEvent::ALL,
        BuiltinEvent::mos_name,
        BuiltinEvent::code,
    );
    refuses::<BuiltinEvent, u32>(&[0, 1, 2, 3, 4, 5, 6, 7, 8], 0..0x400);
    assert_eq!(USER_EVENT_BASE, 0x100);
    assert_eq!(MAX_USER_EVENTS, 32);
    assert_eq!(USER_EVENT_NAME, "USER");

    // Event numbers: built-in, then nothing up to the user range, then user event k.
    for b in BuiltinEvent::ALL {
        let c = EventCode::Builtin(b);
        assert_eq!(EventCode::try_from(c.code()), Ok(c));
    }
    assert_eq!(EventCode::try_from(0x100), Ok(EventCode::User(0)));
    assert_eq!(EventCode::try_from(0x11f), Ok(EventCode::User(31)));
    assert_eq!(EventCode::User(5).code(), 0x105);
    for c in 9..0x100 {
        assert!(EventCode::try_from(c).is_err(), "{c}");
    }
}

#[test]
fn subscription_bits() {
    assert_eq!(USER_MASK_SHIFT, 32);
    assert_eq!(BuiltinEvent::PktIn.mask_bit(Hook::Snd), 1);
    assert_eq!(BuiltinEvent::PktIn.mask_bit(Hook::Rcv), 1 << 1);
    assert_eq!(BuiltinEvent::NewData.mask_bit(Hook::None), 1 << 8);
    assert_eq!(BuiltinEvent::ConnEnd.mask_bit(Hook::Snd), 1 << 21);
    assert_eq!(BuiltinEvent::Orphan.mask_bit(Hook::None), 1 << 26);
    assert_eq!(user_mask_bit(0), 1 << 32);
    assert_eq!(user_mask_bit(31), 1 << 63);
    // Every built-in event at the hooks it is delivered at (mOS's pairs), pinned.
    let all = [0, 1, 3, 4, 8, 10, 12, 13, 17, 20, 21, 22, 26]
        .iter()
        .fold(0u64, |m, b| m | 1 << b);
    assert_eq!(BuiltinEvent::ALL_MASK, all);
    assert_eq!(BuiltinEvent::Rexmit.hooks(), [Hook::Rcv]);
    assert_eq!(BuiltinEvent::Orphan.hooks(), [Hook::None]);
    // No two (event, hook) pairs share a bit, and none reaches the user bits.
    let mut seen = 0u64;
    for b in BuiltinEvent::ALL {
        for h in Hook::ALL {
            let bit = b.mask_bit(h);
            assert_eq!(seen & bit, 0, "{b:?} {h:?}");
            assert!(bit < user_mask_bit(0));
            seen |= bit;
        }
    }
}

#[test]
fn tcp_states() {
    pinned(
        &[
            ("CLOSED", 0u8),
            ("LISTEN", 1),
            ("SYN_SENT", 2),
            ("SYN_RCVD", 3),
            ("ESTABLISHED", 4),
            ("FIN_WAIT_1", 5),
            ("FIN_WAIT_2", 6),
            ("CLOSE_WAIT", 7),
            ("CLOSING", 8),
            ("LAST_ACK", 9),
            ("TIME_WAIT", 10),
        ],
        &TcpState::ALL,
        TcpState::name,
        TcpState::code,
    );
    refuses::<TcpState, u8>(&(0..=10).collect::<Vec<u8>>(), 0..=u8::MAX);
    assert_eq!(TcpState::TimeWait.to_string(), "TIME_WAIT");
}

#[test]
fn end_reasons() {
    pinned(
        &[
            ("fin", 0u8),
            ("rst", 1),
            ("timeout", 2),
            ("evicted", 3),
            ("stopped", 4),
            ("eof", 5),
            ("shutdown", 6),
            ("reloaded", 7),
        ],
        &EndReason::ALL,
        EndReason::name,
        EndReason::code,
    );
    refuses::<EndReason, u8>(&(0..=7).collect::<Vec<u8>>(), 0..=u8::MAX);
    assert_eq!(END_REASON_OPEN, -1);
}

#[test]
fn error_kinds() {
    pinned(
        &[
            ("BeyondWindow", 0u8),
            ("Overrun", 1),
            ("FragmentLimit", 2),
            ("OutOfBufferMemory", 3),
            ("IpOverlap", 4),
        ],
        &ErrorKind::ALL,
        ErrorKind::name,
        ErrorKind::code,
    );
    refuses::<ErrorKind, u8>(&[0, 1, 2, 3, 4], 0..=u8::MAX);
    // Records print the name, which must stay what `{:?}` printed before it existed.
    for e in ErrorKind::ALL {
        assert_eq!(format!("{e:?}"), e.name());
    }
}

#[test]
fn details() {
    pinned(
        &[("none", 0u8), ("state", 1), ("end", 2), ("error", 3)],
        &DetailKind::ALL,
        DetailKind::name,
        DetailKind::code,
    );
    refuses::<DetailKind, u8>(&[0, 1, 2, 3], 0..=u8::MAX);
    assert_eq!(
        (detail::NONE, detail::STATE, detail::END, detail::ERROR),
        (0, 1, 2, 3)
    );
    let all = [Detail::None]
        .into_iter()
        .chain(TcpState::ALL.map(Detail::State))
        .chain(EndReason::ALL.map(Detail::End))
        .chain(ErrorKind::ALL.map(Detail::Error));
    for d in all {
        let (k, v) = d.to_abi();
        assert_eq!(Detail::from_abi(k, v), d);
    }
    assert_eq!(Detail::State(TcpState::Established).to_abi(), (1, 4));
    assert_eq!(Detail::End(EndReason::Reloaded).to_abi(), (2, 7));
    assert_eq!(Detail::Error(ErrorKind::Overrun).to_abi(), (3, 1));
    // What this version cannot name is no detail.
    assert_eq!(Detail::from_abi(1, 11), Detail::None);
    assert_eq!(Detail::from_abi(3, 5), Detail::None);
    assert_eq!(Detail::from_abi(9, 0), Detail::None);
}

#[test]
fn errno_values() {
    pinned(
        &[
            ("EACCES", 13i32),
            ("EBADF", 9),
            ("EINVAL", 22),
            ("ESOCKTNOSUPPORT", 94),
            ("ENOTCONN", 107),
            ("ENODATA", 61),
            ("EPERM", 1),
            ("ENOSPC", 28),
        ],
        &Errno::ALL,
        Errno::name,
        Errno::code,
    );
    refuses::<Errno, i32>(&[13, 9, 22, 94, 107, 61, 1, 28], -200..200);
    assert_eq!(Errno::NoData.ret(), -61);
    assert_eq!(Errno::NoData.to_string(), "ENODATA (61)");
}

#[test]
fn log_levels_and_overlap() {
    pinned(
        &[("error", 0u8), ("warning", 1), ("info", 2), ("debug", 3)],
        &LogLevel::ALL,
        LogLevel::name,
        LogLevel::code,
    );
    refuses::<LogLevel, u8>(&[0, 1, 2, 3], 0..=u8::MAX);
    pinned(
        &[("first", 0u8), ("last", 1)],
        &Overlap::ALL,
        Overlap::name,
        Overlap::code,
    );
    refuses::<Overlap, u8>(&[0, 1], 0..=u8::MAX);
}

#[test]
fn special_values() {
    assert_eq!((BUFFER_OFF, BUFFER_DEFAULT), (0, u32::MAX));
    assert_eq!((FAMILY_V4, FAMILY_V6), (4, 6));
    assert_eq!((status::OK, status::PANICKED), (0, -1));
}
