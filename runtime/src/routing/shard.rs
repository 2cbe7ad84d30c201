//! The shard hash: stable, documented, and easy to write in any language.

/// The shard of an actor: `fmix64(fnv1a64(namespace 0x00 kind 0x00 id)) mod shard_count`.
///
/// FNV-1a (64-bit, offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) runs over the UTF-8
/// bytes of the namespace, a zero byte, the kind, a zero byte and the actor id (not encoded).
/// The MurmurHash3 finaliser `fmix64` then spreads the bits so that the remainder is uniform.
/// `shard_count` is fixed per namespace; changing it moves almost every actor.
pub fn shard_of(namespace: &str, kind: &str, id: &str, shard_count: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(namespace.as_bytes());
    feed(&[0]);
    feed(kind.as_bytes());
    feed(&[0]);
    feed(id.as_bytes());
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(shard_count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values_are_stable() {
        // Computed by an independent implementation of docs/wire.md (Python); other-language
        // clients check theirs against the same table.
        assert_eq!(shard_of("bank", "account", "alice", 1024), 91);
        assert_eq!(shard_of("bank", "account", "bob", 1024), 854);
        assert_eq!(shard_of("bank", "counter", "clicks", 1024), 463);
        assert_eq!(shard_of("tenant-a", "order", "order 42/é", 1024), 568);
        assert_eq!(shard_of("bank", "account", "alice", 7), 5);
        // The zero separators keep (kind, id) boundaries apart.
        assert_ne!(
            shard_of("bank", "accountalice", "", 1 << 31),
            shard_of("bank", "account", "alice", 1 << 31)
        );
    }

    #[test]
    fn spread_is_even() {
        let shards = 64u32;
        let mut counts = vec![0u32; shards as usize];
        for i in 0..64_000 {
            counts[shard_of("ns", "k", &format!("actor-{i}"), shards) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "min {min} max {max}");
    }

    proptest! {
        #[test]
        fn always_in_range(ns in "[a-z]{1,8}", id in "\\PC{1,40}", s in 1u32..5000) {
            prop_assert!(shard_of(&ns, "kind", &id, s) < s);
        }
    }
}
