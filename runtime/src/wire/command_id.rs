//! Command ids: the idempotency key of every ask.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one command. Every ask carries one; a retry that reuses it is applied at most
/// once and answered with the original reply (within the actor's dedup window).
///
/// Stored and sent as 16 bytes; shown as a UUID. Ids made by [`CommandId::random`] are UUID v4.
/// Ids made by [`CommandId::derive`] are deterministic UUID v8 values: a handler that asks other
/// actors gets the same child ids when its command is retried, so the whole saga stays
/// idempotent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(Uuid);

impl CommandId {
    /// A fresh random id (UUID v4 from a per-thread generator seeded by the OS: no system call
    /// per id, which matters on the ask path).
    pub fn random() -> Self {
        let bits = FAST_RNG.with(|rng| {
            let hi = rng.next();
            let lo = rng.next();
            (u128::from(hi) << 64) | u128::from(lo)
        });
        CommandId(uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid())
    }

    /// Wraps raw 128 bits (for clients that make their own ids).
    pub fn from_u128(value: u128) -> Self {
        CommandId(Uuid::from_u128(value))
    }

    /// The raw 128 bits.
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    /// The `n`-th child id of this id: deterministic, distinct for distinct `(self, n)` in
    /// practice (a 128-bit mix), and never equal to `self`.
    pub fn derive(&self, n: u64) -> CommandId {
        let v = self.0.as_u128();
        let hi = mix64((v >> 64) as u64 ^ mix64(n.wrapping_add(0x9E37_79B9_7F4A_7C15)));
        let lo = mix64(v as u64 ^ hi.rotate_left(29) ^ n);
        let bytes = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
        CommandId(Uuid::new_v8(bytes))
    }
}

/// wyrand: a small, fast generator; 64-bit state per thread.
struct WyRand(std::cell::Cell<u64>);

impl WyRand {
    fn seeded() -> Self {
        // One OS-random seed per thread (through a random UUID), mixed with the thread id.
        let seed = Uuid::new_v4().as_u128();
        WyRand(std::cell::Cell::new((seed >> 64) as u64 ^ seed as u64))
    }

    fn next(&self) -> u64 {
        let s = self.0.get().wrapping_add(0xa076_1d64_78bd_642f);
        self.0.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }
}

thread_local! {
    static FAST_RNG: WyRand = WyRand::seeded();
}

/// The finaliser of MurmurHash3: a fast, well-distributed 64-bit mix.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_deterministic_and_distinct() {
        let parent = CommandId::from_u128(42);
        assert_eq!(parent.derive(0), parent.derive(0));
        assert_ne!(parent.derive(0), parent.derive(1));
        assert_ne!(parent.derive(0), parent);
        assert_ne!(parent.derive(0), CommandId::from_u128(43).derive(0));
        let mut seen = std::collections::HashSet::new();
        for p in 0..100u128 {
            for n in 0..100 {
                assert!(seen.insert(CommandId::from_u128(p).derive(n)));
            }
        }
    }

    #[test]
    fn random_ids_are_v4_and_distinct() {
        let ids: std::collections::HashSet<CommandId> =
            (0..10_000).map(|_| CommandId::random()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.0.get_version_num() == 4));
    }

    #[test]
    fn encodes_as_sixteen_bytes() {
        let id = CommandId::random();
        let bytes = rmp_serde::to_vec_named(&id).unwrap();
        assert_eq!(bytes.len(), 18); // bin8 header + 16 bytes
        assert_eq!(rmp_serde::from_slice::<CommandId>(&bytes).unwrap(), id);
    }
}
