//! Code storage (docs/math.md): a flat row-major stream, little end first.
//!
//! b=4: element 2i is the low nibble of byte i; b=2: element 4i+j sits at bits 2j..2j+1;
//! b=8 (or `pack=false`): one byte per code.

/// Bytes that `n` codes of `bits` bits take when packed.
pub fn packed_len(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Bytes the code stream takes for `n` elements.
pub fn stream_len(n: usize, bits: u8, pack: bool) -> usize {
    if pack {
        packed_len(n, bits)
    } else {
        n
    }
}

/// Appends codes to a byte slice that starts on a byte boundary of the stream.
pub struct CodeWriter<'o> {
    out: &'o mut [u8],
    pos: usize,
    acc: u32,
    filled: u32,
    bits: u32,
    /// `8 / bits`, kept so the per-group path does no integer division.
    per_byte: u32,
}

impl<'o> CodeWriter<'o> {
    /// A writer of `bits`-bit codes; `bits = 8` also serves unpacked storage.
    pub fn new(out: &'o mut [u8], bits: u8) -> Self {
        CodeWriter { out, pos: 0, acc: 0, filled: 0, bits: bits as u32, per_byte: 8 / bits as u32 }
    }

    /// Append one code (only its low `bits` bits are set).
    #[inline(always)]
    pub fn push(&mut self, code: u8) {
        if self.bits == 8 {
            self.out[self.pos] = code;
            self.pos += 1;
            return;
        }
        self.acc |= (code as u32) << self.filled;
        self.filled += self.bits;
        if self.filled == 8 {
            self.out[self.pos] = self.acc as u8;
            self.pos += 1;
            self.acc = 0;
            self.filled = 0;
        }
    }

    /// True when the next code starts a fresh byte.
    #[inline(always)]
    pub fn byte_aligned(&self) -> bool {
        self.filled == 0
    }

    /// Bits per code (8 also for unpacked storage).
    #[inline(always)]
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The next `n` whole bytes of the stream, for a caller that packs them itself; the
    /// writer is [`Self::byte_aligned`] and stays so.
    #[inline(always)]
    pub fn next_bytes(&mut self, n: usize) -> &mut [u8] {
        debug_assert!(self.byte_aligned());
        self.pos += n;
        &mut self.out[self.pos - n..self.pos]
    }

    /// Codes per byte at this writer's width.
    #[inline(always)]
    pub fn codes_per_byte(&self) -> usize {
        self.per_byte as usize
    }

    /// Append one-byte codes filling whole bytes: the writer is [`Self::byte_aligned`] and
    /// `codes.len()` is a multiple of [`Self::codes_per_byte`]. Branch-free, so it vectorizes.
    #[inline(always)]
    pub fn push_whole_bytes(&mut self, codes: &[u8]) {
        debug_assert!(self.byte_aligned() && codes.len().is_multiple_of(self.codes_per_byte()));
        let n = codes.len() / self.codes_per_byte();
        let out = &mut self.out[self.pos..self.pos + n];
        match self.bits {
            8 => out.copy_from_slice(codes),
            4 => {
                for (o, c) in out.iter_mut().zip(codes.chunks_exact(2)) {
                    *o = c[0] | (c[1] << 4);
                }
            }
            _ => {
                for (o, c) in out.iter_mut().zip(codes.chunks_exact(4)) {
                    *o = c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6);
                }
            }
        }
        self.pos += n;
    }

    /// Write the last partial byte, if any. Returns the number of bytes written.
    pub fn finish(mut self) -> usize {
        if self.filled > 0 {
            self.out[self.pos] = self.acc as u8;
            self.pos += 1;
        }
        self.pos
    }
}

/// Pack one-byte codes into the `bits`-bit stream.
pub fn pack(codes: &[u8], bits: u8) -> Vec<u8> {
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    let mut w = CodeWriter::new(&mut out, bits);
    for &c in codes {
        w.push(c);
    }
    w.finish();
    out
}

/// Code number `i` of a packed stream.
#[inline(always)]
pub fn get_code(packed: &[u8], bits: u8, i: usize) -> u8 {
    match bits {
        8 => packed[i],
        4 => (packed[i / 2] >> ((i % 2) * 4)) & 0x0f,
        2 => (packed[i / 4] >> ((i % 4) * 2)) & 0x03,
        _ => unreachable!("bits is validated to be 2, 4 or 8"),
    }
}

/// Unpack `n` codes of a packed stream into one byte each.
pub fn unpack(packed: &[u8], bits: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| get_code(packed, bits, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_order_is_little_end_first() {
        assert_eq!(pack(&[1, 2, 3], 4), vec![0x21, 0x03]);
        assert_eq!(pack(&[1, 2, 3, 0, 3], 2), vec![0b00_11_10_01, 0b11]);
        assert_eq!(pack(&[7, 9], 8), vec![7, 9]);
    }

    #[test]
    fn unpack_inverts_pack() {
        let codes: Vec<u8> = (0..37u8).map(|i| i % 4).collect();
        for bits in [2u8, 4, 8] {
            assert_eq!(unpack(&pack(&codes, bits), bits, codes.len()), codes);
        }
    }
}
