//! The Internet checksum (RFC 1071): ones' complement sum of 16-bit big-endian words.

/// A running ones' complement sum.
///
/// Summing 32-bit big-endian words into a 64-bit accumulator and folding at the end
/// gives the same result as summing 16-bit words (2^16 ≡ 1 mod 2^16 − 1), with half the
/// additions. Every `add_*` call but the last must cover an even number of bytes so the
/// 16-bit word alignment is kept (pseudo-header parts are all multiples of 4).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sum(u64);

impl Sum {
    #[inline]
    pub(super) fn new() -> Sum {
        Sum(0)
    }

    /// Adds a 32-bit value (as two 16-bit words).
    #[inline]
    pub(super) fn add_u32(&mut self, v: u32) {
        self.0 += u64::from(v);
    }

    /// Adds `data` as big-endian 16-bit words, the last odd byte padded with zero.
    #[inline]
    pub(super) fn add_bytes(&mut self, data: &[u8]) {
        let mut acc = self.0;
        let mut words = data.chunks_exact(4);
        for w in &mut words {
            // `chunks_exact(4)` yields 4-byte slices; the pattern cannot fail.
            if let &[a, b, c, d] = w {
                acc += u64::from(u32::from_be_bytes([a, b, c, d]));
            }
        }
        match *words.remainder() {
            [] => {}
            [a] => acc += u64::from(u16::from_be_bytes([a, 0])),
            [a, b] => acc += u64::from(u16::from_be_bytes([a, b])),
            [a, b, c] => {
                acc += u64::from(u16::from_be_bytes([a, b])) + u64::from(u16::from_be_bytes([c, 0]))
            }
            _ => {}
        }
        self.0 = acc;
    }

    /// The sum folded to 16 bits.
    #[inline]
    pub(super) fn fold(self) -> u16 {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// Whether data that includes its own checksum field sums to all ones.
    #[inline]
    pub(super) fn is_valid(self) -> bool {
        self.fold() == 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::Sum;

    /// Reference 16-bit word sum.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for w in data.chunks(2) {
            let hi = u32::from(w[0]) << 8;
            let lo = w.get(1).copied().map(u32::from).unwrap_or(0);
            s += hi | lo;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn matches_word_sum_for_all_lengths() {
        let data: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(97) ^ 0xa5) as u8)
            .collect();
        for len in 0..data.len() {
            let mut s = Sum::new();
            s.add_bytes(&data[..len]);
            assert_eq!(s.fold(), naive(&data[..len]), "len {len}");
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let mut s = Sum::new();
        s.add_bytes(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(s.fold(), 0xddf2);
    }
}
