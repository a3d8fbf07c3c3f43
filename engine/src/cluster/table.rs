//! The cluster's partition map and membership records, as they are stored in the key-value
//! buckets (JSON), and the assignment of partitions to nodes: pure functions, no I/O.
//!
//! The map gives every partition an owner (node, shard). It changes only by a
//! compare-and-set on its bucket revision, each change one epoch higher, so two writers
//! that read the same map can never both win. An assignment keeps every partition whose
//! owner is still eligible (live, not draining) and under its share, and gives the rest to
//! the eligible nodes furthest below theirs: a node's share is proportional to its shards.
//! Within its node a partition goes to shard `p % shards`, the node's own partition table
//! (see `verdict_net::routing`), so the map and every node's shards agree on the owner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest node name (names are key-value keys: `[A-Za-z0-9_-]`).
pub const NODE_NAME_LEN_MAX: usize = 64;

/// Whether `name` can name a node (it is used as a key-value key and in subjects).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NODE_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a node says about itself in the membership bucket (refreshed every heartbeat; the
/// bucket forgets a record older than `cluster.node_ttl_ms`). Unknown fields are ignored, so
/// a node of a later version that adds one is still read as live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    /// The address other nodes and clients reach this node on.
    pub address: String,
    /// The shared binary port.
    pub port: u16,
    /// `shard_ports[i]` reaches shard i.
    pub shard_ports: Vec<u16>,
    /// The HTTP/JSON port (0: off).
    pub http_port: u16,
    /// When the node started serving, ms since the Unix epoch (a restart is a new value).
    pub started_ms: u64,
    /// When this record was written, ms since the Unix epoch.
    pub heartbeat_ms: u64,
    /// Decision records logged and not yet in the decision stream (its lag).
    #[serde(default)]
    pub decisions_unshipped: u64,
    /// The digest of the velocity functions it decides with (`RuleSet::windows_digest`):
    /// other nodes send it keys to record only under the same one.
    #[serde(default)]
    pub windows: String,
    /// Everything this node decided while it routed by a map older than this epoch is in
    /// the event stream: a node taking partitions over at this epoch waits for it before
    /// replaying them ([`super::replay`]).
    #[serde(default)]
    pub shipped_epoch: u64,
    /// Partitions it owns and is still replaying (a move in progress).
    #[serde(default)]
    pub cold_partitions: u32,
    /// The map epoch its shards route by (0: none yet).
    #[serde(default)]
    pub routes_epoch: u64,
    /// Partitions the map has given another node that this node still decides, with the
    /// shard that keeps each, `[partition, shard]`: it served them warm, and serves them on
    /// until their new owner has replayed their history (a handoff, [`super::replay`]).
    /// Every node routes these here meanwhile.
    #[serde(default)]
    pub handing_off: Vec<(u32, u16)>,
    /// Partitions it has stopped deciding at the end of a handoff and is still shipping
    /// what it decided of: their new owner replays their last events once they leave this.
    #[serde(default)]
    pub releasing: Vec<u32>,
    /// Partitions handed to this node whose history it has replayed while their old owner
    /// still decides them: the old owner stops deciding them when it reads them here.
    #[serde(default)]
    pub prepared: Vec<u32>,
}

impl NodeInfo {
    /// The record of a node starting now: where it listens; nothing shipped or routed yet.
    pub fn starting(node: &str, address: &str, port: u16, shard_ports: Vec<u16>) -> NodeInfo {
        NodeInfo {
            node: node.into(),
            address: address.into(),
            port,
            shard_ports,
            http_port: 0,
            started_ms: super::now_ms(),
            heartbeat_ms: 0,
            decisions_unshipped: 0,
            windows: String::new(),
            shipped_epoch: 0,
            cold_partitions: 0,
            routes_epoch: 0,
            handing_off: Vec::new(),
            releasing: Vec::new(),
            prepared: Vec::new(),
        }
    }

    pub fn shards(&self) -> u32 {
        self.shard_ports.len() as u32
    }
}

/// Which node and shard own each partition, at one epoch. (Unknown fields are ignored, for
/// the same reason.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    /// One higher with every change; the first map is epoch 1.
    pub epoch: u64,
    pub partitions: u32,
    /// The nodes named in `owner`, sorted.
    pub nodes: Vec<String>,
    /// `owner[p]` indexes `nodes`: the node owning partition p.
    pub owner: Vec<u16>,
    /// `shard[p]`: the shard of that node owning partition p.
    pub shard: Vec<u16>,
    /// Nodes that are given no partitions (`verdict cluster drain`), sorted.
    #[serde(default)]
    pub draining: Vec<String>,
}

/// Why a map could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no node can own partitions: none is live and not draining")]
    NoEligibleNode,
    #[error("the partition map is inconsistent: {0}")]
    Invalid(String),
}

impl PartitionMap {
    /// Checks the map's shape: every partition has an owner among `nodes`.
    pub fn check(&self) -> Result<(), TableError> {
        let p = self.partitions as usize;
        if p == 0 || self.owner.len() != p || self.shard.len() != p {
            return Err(TableError::Invalid(format!(
                "{} partitions, {} owners, {} shards",
                self.partitions,
                self.owner.len(),
                self.shard.len()
            )));
        }
        if let Some(bad) = self.owner.iter().find(|&&o| o as usize >= self.nodes.len()) {
            return Err(TableError::Invalid(format!(
                "owner index {bad} with {} nodes",
                self.nodes.len()
            )));
        }
        if !self.nodes.windows(2).all(|w| w[0] < w[1]) {
            return Err(TableError::Invalid(
                "nodes are not sorted and unique".into(),
            ));
        }
        Ok(())
    }

    /// Node and shard owning partition `p`.
    pub fn owner_of(&self, p: u32) -> (&str, u16) {
        let i = p as usize;
        (self.nodes[self.owner[i] as usize].as_str(), self.shard[i])
    }

    /// Partitions each node owns.
    pub fn counts(&self) -> BTreeMap<&str, u32> {
        let mut counts: BTreeMap<&str, u32> = self.nodes.iter().map(|n| (n.as_str(), 0)).collect();
        for &o in &self.owner {
            *counts
                .get_mut(self.nodes[o as usize].as_str())
                .expect("checked") += 1;
        }
        counts
    }

    /// Partitions whose owner differs from `other`'s (node or shard).
    pub fn moves_from(&self, other: &PartitionMap) -> u32 {
        (0..self.partitions.min(other.partitions))
            .filter(|&p| self.owner_of(p) != other.owner_of(p))
            .count() as u32
    }

    /// The owners only (epoch aside): whether two maps place every partition alike.
    pub fn same_placement(&self, other: &PartitionMap) -> bool {
        self.partitions == other.partitions
            && self.draining == other.draining
            && self.moves_from(other) == 0
    }
}

/// The map that places `partitions` on `live` nodes (name -> shard count), keeping what it
/// can of `prev`: a partition stays where it is while its owner is eligible and under its
/// share. Nodes in `draining` get nothing. The epoch is `prev`'s + 1 (1 without `prev`).
pub fn assign(
    prev: Option<&PartitionMap>,
    partitions: u32,
    live: &BTreeMap<String, u32>,
    draining: &[String],
) -> Result<PartitionMap, TableError> {
    let eligible: Vec<(&str, u32)> = live
        .iter()
        .filter(|(name, shards)| **shards > 0 && !draining.contains(name))
        .map(|(name, shards)| (name.as_str(), *shards))
        .collect();
    if eligible.is_empty() {
        return Err(TableError::NoEligibleNode);
    }
    // Shares proportional to shards; the remainder goes one each to the first nodes.
    let total_shards: u64 = eligible.iter().map(|(_, s)| u64::from(*s)).sum();
    let mut share: Vec<u32> = eligible
        .iter()
        .map(|(_, s)| (u64::from(partitions) * u64::from(*s) / total_shards) as u32)
        .collect();
    let given: u32 = share.iter().sum();
    // Fewer than one per node is left over.
    for s in share.iter_mut().take((partitions - given) as usize) {
        *s += 1;
    }
    debug_assert_eq!(share.iter().sum::<u32>(), partitions);
    let index_of = |name: &str| eligible.iter().position(|(n, _)| *n == name);
    let p = partitions as usize;
    let mut owner: Vec<Option<usize>> = vec![None; p];
    let mut shard = vec![0u16; p];
    let mut held = vec![0u32; eligible.len()];
    if let Some(prev) = prev.filter(|m| m.partitions == partitions && m.check().is_ok()) {
        for part in 0..p {
            let (node, _) = prev.owner_of(part as u32);
            if let Some(i) = index_of(node)
                && held[i] < share[i]
            {
                owner[part] = Some(i);
                held[i] += 1;
                shard[part] = (part as u32 % eligible[i].1) as u16;
            }
        }
    }
    for part in 0..p {
        if owner[part].is_some() {
            continue;
        }
        // The node furthest below its share (ties: the first by name).
        let i = (0..eligible.len())
            .filter(|&i| held[i] < share[i])
            .max_by_key(|&i| (share[i] - held[i], std::cmp::Reverse(i)))
            .expect("shares add up to the partitions");
        owner[part] = Some(i);
        held[i] += 1;
        shard[part] = (part as u32 % eligible[i].1) as u16;
    }
    let mut draining: Vec<String> = draining.to_vec();
    draining.sort();
    draining.dedup();
    Ok(PartitionMap {
        epoch: prev.map_or(1, |m| m.epoch + 1),
        partitions,
        nodes: eligible.iter().map(|(n, _)| n.to_string()).collect(),
        owner: owner
            .into_iter()
            .map(|o| o.expect("every partition placed") as u16)
            .collect(),
        shard,
        draining,
    })
}

/// The map after owners of `prev` left `live`: their partitions go to the surviving owners
/// only (a node that joined and was not rebalanced in stays out, so nothing else moves),
/// or to every live node when no owner survives.
pub fn failover(
    prev: &PartitionMap,
    live: &BTreeMap<String, u32>,
) -> Result<PartitionMap, TableError> {
    let mut heirs: BTreeMap<String, u32> = live
        .iter()
        .filter(|(name, _)| prev.nodes.contains(name))
        .map(|(name, s)| (name.clone(), *s))
        .collect();
    if heirs.is_empty() {
        heirs = live.clone();
    }
    assign(Some(prev), prev.partitions, &heirs, &prev.draining)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(nodes: &[(&str, u32)]) -> BTreeMap<String, u32> {
        nodes.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn a_first_map_spreads_partitions_by_shards() {
        let m = assign(None, 4096, &live(&[("a", 1), ("b", 2), ("c", 1)]), &[]).unwrap();
        m.check().unwrap();
        assert_eq!(m.epoch, 1);
        let counts = m.counts();
        assert_eq!((counts["a"], counts["b"], counts["c"]), (1024, 2048, 1024));
        for p in 0..4096 {
            let (node, shard) = m.owner_of(p);
            let shards = if node == "b" { 2 } else { 1 };
            assert_eq!(
                u32::from(shard),
                p % shards,
                "the node's own table places it"
            );
        }
    }

    #[test]
    fn a_lost_node_moves_only_its_partitions() {
        let three = live(&[("a", 1), ("b", 1), ("c", 1)]);
        let m1 = assign(None, 4096, &three, &[]).unwrap();
        let two = live(&[("a", 1), ("c", 1)]);
        let m2 = assign(Some(&m1), 4096, &two, &[]).unwrap();
        assert_eq!(m2.epoch, 2);
        assert_eq!(m2.moves_from(&m1), m1.counts()["b"]);
        for p in 0..4096 {
            if m1.owner_of(p).0 != "b" {
                assert_eq!(
                    m1.owner_of(p),
                    m2.owner_of(p),
                    "partition {p} moved needlessly"
                );
            }
        }
        let counts = m2.counts();
        assert_eq!((counts["a"], counts["c"]), (2048, 2048));
        // It comes back: a rebalance gives it a third again, moving only that third.
        let m3 = assign(Some(&m2), 4096, &three, &[]).unwrap();
        assert_eq!(m3.counts()["b"], 1365);
        assert_eq!(m3.moves_from(&m2), 1365);
        // Balanced already: assigning again changes nothing.
        let m4 = assign(Some(&m3), 4096, &three, &[]).unwrap();
        assert!(m4.same_placement(&m3));
    }

    #[test]
    fn a_failover_moves_only_the_lost_partitions_even_with_a_newcomer_waiting() {
        let m1 = assign(None, 4096, &live(&[("a", 1), ("b", 1)]), &[]).unwrap();
        // c (4 shards) joined but was never rebalanced in; then b is lost.
        let m2 = failover(&m1, &live(&[("a", 1), ("c", 4)])).unwrap();
        assert_eq!(m2.counts().get("a"), Some(&4096));
        assert_eq!(m2.moves_from(&m1), 2048);
        // Every owner lost: the live nodes take everything.
        let m3 = failover(&m2, &live(&[("c", 4)])).unwrap();
        assert_eq!(m3.counts().get("c"), Some(&4096));
    }

    #[test]
    fn draining_nodes_get_nothing_and_someone_must_be_eligible() {
        let three = live(&[("a", 1), ("b", 1), ("c", 1)]);
        let m1 = assign(None, 64, &three, &[]).unwrap();
        let m2 = assign(Some(&m1), 64, &three, &["b".into()]).unwrap();
        assert!(!m2.counts().contains_key("b"));
        assert_eq!(m2.draining, ["b"]);
        assert_eq!(
            assign(Some(&m2), 64, &three, &["a".into(), "b".into(), "c".into()]),
            Err(TableError::NoEligibleNode)
        );
        assert_eq!(
            assign(None, 64, &live(&[]), &[]),
            Err(TableError::NoEligibleNode)
        );
    }

    #[test]
    fn maps_round_trip_as_json_and_bad_ones_are_refused() {
        let m = assign(None, 16, &live(&[("n1", 2), ("n2", 1)]), &[]).unwrap();
        let text = serde_json::to_string(&m).unwrap();
        let back: PartitionMap = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        let mut bad = m.clone();
        bad.owner[3] = 9;
        assert!(bad.check().is_err());
        bad = m.clone();
        bad.shard.pop();
        assert!(bad.check().is_err());
    }

    #[test]
    fn node_names_are_keys() {
        assert!(valid_node_name("node-1_a"));
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(65)] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }
}
