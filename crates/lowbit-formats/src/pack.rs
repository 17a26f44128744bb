//! Bit packing of 1..=8-bit codes into little-endian u32 words.
//!
//! Layout: codes form one little-endian bit stream; code i occupies stream bits
//! [i*b, (i+1)*b), its least significant bit first, and word w holds stream bits [32w, 32w+32)
//! with stream bit 32w at bit 0. Widths that do not divide 32 (3, 5, 6, 7) straddle words;
//! the unused high bits of the last word are zero. See docs/FORMATS.md for diagrams.

/// Number of u32 words for `n` codes of `bits` bits.
pub fn packed_words(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(32)
}

fn check_bits(bits: u32) -> Result<(), String> {
    if (1..=8).contains(&bits) {
        Ok(())
    } else {
        Err(format!("bit width must be 1..=8, got {bits}"))
    }
}

/// Pack `codes` (each must fit in `bits` bits) into `dst` (exactly `packed_words` words).
pub fn pack_into(codes: &[u8], bits: u32, dst: &mut [u32]) -> Result<(), String> {
    check_bits(bits)?;
    let need = packed_words(codes.len(), bits);
    if dst.len() != need {
        return Err(format!(
            "pack: {} codes of {bits} bits need {need} words, got {}",
            codes.len(),
            dst.len()
        ));
    }
    let mask = ((1u32 << bits) - 1) as u8;
    if let Some((i, c)) = codes.iter().enumerate().find(|(_, &c)| c & !mask != 0) {
        return Err(format!(
            "pack: code {c} at index {i} does not fit in {bits} bits"
        ));
    }
    dst.fill(0);
    if 32 % bits == 0 {
        // Fast path: whole codes per word.
        let per = (32 / bits) as usize;
        for (w, chunk) in dst.iter_mut().zip(codes.chunks(per)) {
            let mut acc = 0u32;
            for (k, &c) in chunk.iter().enumerate() {
                acc |= (c as u32) << (k as u32 * bits);
            }
            *w = acc;
        }
        return Ok(());
    }
    let mut acc = 0u64;
    let mut nbits = 0u32;
    let mut out = 0usize;
    for &c in codes {
        acc |= (c as u64) << nbits;
        nbits += bits;
        if nbits >= 32 {
            dst[out] = acc as u32;
            out += 1;
            acc >>= 32;
            nbits -= 32;
        }
    }
    if nbits > 0 {
        dst[out] = acc as u32;
    }
    Ok(())
}

/// Pack into a new vector.
pub fn pack(codes: &[u8], bits: u32) -> Result<Vec<u32>, String> {
    check_bits(bits)?;
    let mut v = vec![0u32; packed_words(codes.len(), bits)];
    pack_into(codes, bits, &mut v)?;
    Ok(v)
}

/// Unpack `dst.len()` codes of `bits` bits from `words`.
pub fn unpack_into(words: &[u32], bits: u32, dst: &mut [u8]) -> Result<(), String> {
    check_bits(bits)?;
    let need = packed_words(dst.len(), bits);
    if words.len() < need {
        return Err(format!(
            "unpack: {} codes of {bits} bits need {need} words, got {}",
            dst.len(),
            words.len()
        ));
    }
    let mask = (1u64 << bits) - 1;
    for (i, d) in dst.iter_mut().enumerate() {
        let bit = i * bits as usize;
        let (w, off) = (bit / 32, (bit % 32) as u32);
        let lo = words[w] as u64;
        let hi = if off + bits > 32 {
            words[w + 1] as u64
        } else {
            0
        };
        *d = (((lo | (hi << 32)) >> off) & mask) as u8;
    }
    Ok(())
}

pub fn unpack(words: &[u32], bits: u32, n: usize) -> Result<Vec<u8>, String> {
    let mut v = vec![0u8; n];
    unpack_into(words, bits, &mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_examples() {
        // 4-bit: code i in nibble i of the word, lowest first.
        assert_eq!(
            pack(&[1, 2, 3, 4, 5, 6, 7, 8], 4).unwrap(),
            vec![0x8765_4321]
        );
        // 3-bit: code 10 straddles words 0 and 1 (stream bits 30..33).
        let codes: Vec<u8> = (0..11).map(|i| (i % 8) as u8).collect();
        let w = pack(&codes, 3).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0] >> 30, (codes[10] & 3) as u32);
        assert_eq!(w[1], (codes[10] >> 2) as u32);
        assert!(pack(&[8], 3).is_err());
        assert!(pack(&[0], 9).is_err());
        assert!(unpack(&[0], 8, 5).is_err());
    }
}
