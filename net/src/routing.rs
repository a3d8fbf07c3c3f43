//! Who owns what: every key value (an account, a device, an IP, a merchant) lives in one of
//! `partitions` virtual partitions, and a partition table maps each partition to the shard
//! that owns it. The owner of an event's account decides the event; the owner of its device
//! (IP, merchant) keeps that device's velocity windows.
//!
//! ```text
//! partition = fnv1a64(value bytes) % partitions
//! owner     = partition_shards[partition]          (default table: partition % shard_count)
//! ```
//!
//! FNV-1a 64-bit: offset basis 0xcbf29ce484222325, prime 0x100000001b3, over the value's
//! bytes: the UTF-8 bytes of `account_id`, `device_id` and `merchant_id`; an IP's address
//! bytes in network order (4 for IPv4, 16 for IPv6). Chosen because any client in any
//! language can implement it in five lines. The topology reply carries `partitions` and the
//! whole table, and names the scheme [`ROUTING_NAME`]. Partitions, not hashes, are what move
//! when shards (later, machines) are added, so no key is ever rehashed.

/// The routing scheme's name, as reported in `TopologyReply.routing`.
pub const ROUTING_NAME: &str = "fnv1a64-partitions";
/// The default number of partitions (`routing.partitions`).
pub const PARTITIONS_DEFAULT: u32 = 4096;
/// The most partitions a deployment may have.
pub const PARTITIONS_MAX: u32 = 65536;

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of a key value (its bytes, as above) among `partitions`.
#[inline]
pub fn partition_of(value: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "partitions must be positive");
    (fnv1a64(value) % u64::from(partitions)) as u32
}

/// The partition table: which shard owns each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// `owners[p]` is the shard that owns partition `p`.
    owners: Vec<u16>,
}

/// Why a partition table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// No partitions, more than [`PARTITIONS_MAX`], or fewer than the shards.
    Partitions { partitions: usize, shard_count: u32 },
    /// A partition names a shard that does not exist.
    Owner {
        partition: usize,
        shard: u16,
        shard_count: u32,
    },
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Partitions {
                partitions,
                shard_count,
            } => write!(
                f,
                "{partitions} partitions for {shard_count} shards: need at least the shard count and at most {PARTITIONS_MAX}"
            ),
            TableError::Owner {
                partition,
                shard,
                shard_count,
            } => write!(
                f,
                "partition {partition} is owned by shard {shard}, but there are {shard_count} shards"
            ),
        }
    }
}

impl std::error::Error for TableError {}

impl PartitionTable {
    /// The default table: partition `p` is owned by shard `p % shard_count`.
    pub fn modulo(partitions: u32, shard_count: u32) -> Result<PartitionTable, TableError> {
        let owners = (0..partitions)
            .map(|p| (p % shard_count.max(1)) as u16)
            .collect();
        PartitionTable::new(owners, shard_count)
    }

    /// A table from its owners (as a topology reply carries them), checked.
    pub fn new(owners: Vec<u16>, shard_count: u32) -> Result<PartitionTable, TableError> {
        let partitions = owners.len();
        if partitions == 0
            || partitions > PARTITIONS_MAX as usize
            || partitions < shard_count as usize
            || shard_count == 0
            || shard_count > u32::from(u16::MAX) + 1
        {
            return Err(TableError::Partitions {
                partitions,
                shard_count,
            });
        }
        if let Some((partition, &shard)) = owners
            .iter()
            .enumerate()
            .find(|&(_, &s)| u32::from(s) >= shard_count)
        {
            return Err(TableError::Owner {
                partition,
                shard,
                shard_count,
            });
        }
        Ok(PartitionTable { owners })
    }

    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// Every partition's owner, in partition order (what the topology reply carries).
    pub fn owners(&self) -> &[u16] {
        &self.owners
    }

    /// The shard that owns partition `partition`.
    #[inline]
    pub fn owner_of_partition(&self, partition: u32) -> u32 {
        u32::from(self.owners[partition as usize])
    }

    /// The shard that owns a key value (its bytes).
    #[inline]
    pub fn owner(&self, value: &[u8]) -> u32 {
        self.owner_of_partition(partition_of(value, self.partitions()))
    }

    /// The shard that decides events of `account_id`.
    #[inline]
    pub fn owner_of_account(&self, account_id: &str) -> u32 {
        self.owner(account_id.as_bytes())
    }
}

impl crate::TopologyReply {
    /// The partition table this reply describes.
    pub fn partition_table(&self) -> Result<PartitionTable, TableError> {
        PartitionTable::new(self.partition_shards.clone(), self.shard_count)
    }
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

    /// The worked example in README's Routing section, computed here so it cannot drift.
    #[test]
    fn the_readme_example_routes_as_documented() {
        assert_eq!(fnv1a64(b"acct-42"), 0xc7c5_7a5b_bc75_1b23);
        assert_eq!(partition_of(b"acct-42", 4096), 2851);
        let table = PartitionTable::modulo(4096, 2).unwrap();
        assert_eq!(table.owner_of_account("acct-42"), 1);
    }

    #[test]
    fn the_default_table_spreads_accounts() {
        let table = PartitionTable::modulo(PARTITIONS_DEFAULT, 4).unwrap();
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[table.owner_of_account(&format!("acct-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn tables_are_checked() {
        assert!(PartitionTable::modulo(1, 2).is_err());
        assert!(PartitionTable::modulo(PARTITIONS_MAX + 1, 2).is_err());
        assert!(PartitionTable::modulo(PARTITIONS_MAX, 2).is_ok());
        assert_eq!(
            PartitionTable::new(vec![0, 2], 2),
            Err(TableError::Owner {
                partition: 1,
                shard: 2,
                shard_count: 2
            })
        );
    }
}
