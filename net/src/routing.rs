//! Which shard owns an event: `fnv1a64(account_id bytes) % shard_count`.
//!
//! FNV-1a 64-bit: offset basis 0xcbf29ce484222325, prime 0x100000001b3, over the UTF-8 bytes
//! of `account_id`. Chosen because any client in any language can implement it in five lines;
//! the topology response names it as [`ROUTING_NAME`].

/// The routing hash's name, as reported in `TopologyReply.routing`.
pub const ROUTING_NAME: &str = "fnv1a64-mod";

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard that owns events of `account_id`.
pub fn shard_for(account_id: &str, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "shard_count must be positive");
    (fnv1a64(account_id.as_bytes()) % u64::from(shard_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn routing_spreads_accounts() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("acct-{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
