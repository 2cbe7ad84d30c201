//! The varints of docs/wire.md (unsigned LEB128), written from the document, for tests that
//! build or read batch frames with no Aether type.

/// Appends `n` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads the varint at `at` and moves past it (panics on a truncated one: test frames are
/// well formed).
pub fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return n;
        }
        shift += 7;
    }
}
