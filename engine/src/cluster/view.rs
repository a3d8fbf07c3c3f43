//! What the shards know of the cluster: who owns each partition (node, shard) and where each
//! live node's shards listen. The cluster thread builds a [`ClusterView`] from the partition
//! map and the membership records and publishes it through an [`EpochCell`] (the same
//! one-pointer scheme as the rule epoch); a shard takes the new view between batches.
//!
//! A node routes nothing until it holds a view: before its first map, and while it is
//! *fenced* (its own heartbeats have failed for `node_ttl_ms`, so the others may already
//! have taken its partitions), every event is refused with error 9 rather than decided on
//! state that may be someone else's.

use std::net::SocketAddr;
use std::sync::Arc;

use verdict_net::routing::partition_of;
use verdict_rules::epoch::{Epoch, EpochCell};

use super::table::{NodeInfo, PartitionMap};

/// A live node's data ports, by shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    /// Its velocity functions' digest, as its record says ("" if unknown).
    pub windows: String,
    /// `shards[i]`: shard i's own port; `None` when the node is not live (no record).
    pub shards: Option<Vec<SocketAddr>>,
}

/// Where a partition is decided, as one shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On this node (its local table names the shard).
    Here,
    /// On another node: `nodes[node]`, its shard `shard`.
    There { node: u16, shard: u16 },
}

/// Why a view routes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No partition map read yet (the node is starting, or NATS has not answered).
    NoMap,
    /// This node's heartbeats have failed for longer than `node_ttl_ms`.
    Fenced,
}

/// One published view of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// The cell's own number (set on publish).
    pub version: u64,
    pub closed: Option<Closed>,
    /// The partition map's epoch (0: none).
    pub map_epoch: u64,
    pub partitions: u32,
    /// This node's name.
    pub me: String,
    /// This node's index in `nodes`, if the map gives it partitions.
    here: Option<u16>,
    /// Per partition: index in `nodes`, and shard (where it is decided now: the map's
    /// owner, or its old owner while that hands it off).
    owner: Vec<u16>,
    shard: Vec<u16>,
    /// Per partition: the shard of this node the map gives it to (whether or not it is
    /// decided here yet).
    granted: Vec<Option<u16>>,
    /// Per partition: this node owns it and has not yet replayed its history (its windows
    /// here are incomplete): its events and keys are refused (error 9) until it has.
    cold: Vec<bool>,
    /// Whether any partition is cold (the per-key check is skipped when none is).
    any_cold: bool,
    /// Per partition: routed by a handoff (to the node handing it off), not by the map.
    handed: Vec<bool>,
    any_handed: bool,
    pub nodes: Vec<PeerNode>,
}

impl Epoch for ClusterView {
    fn set_epoch(&mut self, epoch: u64) {
        self.version = epoch;
    }
}

/// The cell the cluster thread publishes views in and the shards read.
pub type ViewCell = Arc<EpochCell<ClusterView>>;

impl ClusterView {
    /// The view before any map: routes nothing.
    pub fn closed(me: &str, why: Closed) -> ClusterView {
        ClusterView {
            version: 0,
            closed: Some(why),
            map_epoch: 0,
            partitions: 0,
            me: me.to_string(),
            here: None,
            owner: Vec::new(),
            shard: Vec::new(),
            granted: Vec::new(),
            cold: Vec::new(),
            any_cold: false,
            handed: Vec::new(),
            any_handed: false,
            nodes: Vec::new(),
        }
    }

    /// The view of `map` with the live nodes' records (`live`), for node `me`: a partition
    /// a live node's record says it hands off is routed to that node and shard.
    pub fn of(me: &str, map: &PartitionMap, live: &[NodeInfo]) -> ClusterView {
        let peer = |name: &String| PeerNode {
            name: name.clone(),
            windows: live
                .iter()
                .find(|n| &n.node == name)
                .map_or(String::new(), |n| n.windows.clone()),
            // A record whose address is not an IP one can connect to is not reachable:
            // its node counts as not live here.
            shards: live.iter().find(|n| &n.node == name).and_then(|n| {
                let ip = n.address.parse::<std::net::IpAddr>().ok()?;
                (!ip.is_unspecified()).then(|| {
                    n.shard_ports
                        .iter()
                        .map(|&port| SocketAddr::new(ip, port))
                        .collect()
                })
            }),
        };
        let mut nodes: Vec<PeerNode> = map.nodes.iter().map(peer).collect();
        let mapped = map.nodes.iter().position(|n| n == me).map(|i| i as u16);
        let (mut owner, mut shard) = (map.owner.clone(), map.shard.clone());
        let mut handed = vec![false; map.partitions as usize];
        for record in live.iter().filter(|r| !r.handing_off.is_empty()) {
            // A node the map no longer names (drained) still decides what it hands off.
            let at = match nodes.iter().position(|n| n.name == record.node) {
                Some(at) => at,
                None if nodes.len() < usize::from(u16::MAX) => {
                    nodes.push(peer(&record.node));
                    nodes.len() - 1
                }
                None => continue,
            } as u16;
            for &(p, s) in &record.handing_off {
                if let Some(o) = owner.get_mut(p as usize) {
                    *o = at;
                    shard[p as usize] = s;
                    handed[p as usize] = true;
                }
            }
        }
        ClusterView {
            version: 0,
            closed: None,
            map_epoch: map.epoch,
            partitions: map.partitions,
            me: me.to_string(),
            here: nodes.iter().position(|n| n.name == me).map(|i| i as u16),
            granted: (map.owner.iter().zip(&map.shard))
                .map(|(&o, &s)| (Some(o) == mapped).then_some(s))
                .collect(),
            owner,
            shard,
            cold: vec![false; map.partitions as usize],
            any_cold: false,
            any_handed: handed.iter().any(|&h| h),
            handed,
            nodes,
        }
    }

    /// Whether the map gives partition `p` to this node (decided here once its old owner,
    /// if handing it off, lets it go).
    pub fn granted(&self, p: u32) -> bool {
        self.granted_shard(p).is_some()
    }

    /// The shard of this node the map gives partition `p` to, if it does.
    pub fn granted_shard(&self, p: u32) -> Option<u16> {
        self.granted.get(p as usize).copied().flatten()
    }

    /// This view with the partitions this node owns and has not replayed (`warm[p]` false)
    /// marked cold.
    pub fn with_warm(mut self, warm: &[bool]) -> ClusterView {
        for p in 0..self.owner.len() {
            self.cold[p] =
                self.here == Some(self.owner[p]) && !warm.get(p).copied().unwrap_or(false);
        }
        self.any_cold = self.cold.iter().any(|&c| c);
        self
    }

    /// Whether this node owns partition `p`.
    pub fn owns(&self, p: u32) -> bool {
        self.here.is_some() && self.owner.get(p as usize).copied() == self.here
    }

    /// Whether the partition of key value `value` is this node's and still catching up.
    #[inline]
    pub fn cold(&self, value: &[u8]) -> bool {
        self.any_cold && self.cold[partition_of(value, self.partitions) as usize]
    }

    /// Whether the partition of key value `value` is decided by another node that is handing
    /// it off: an event decided here must not record that key there ([`super::handoff`]).
    #[inline]
    pub fn handed_elsewhere(&self, value: &[u8]) -> bool {
        if !self.any_handed {
            return false;
        }
        let p = partition_of(value, self.partitions) as usize;
        self.handed[p] && Some(self.owner[p]) != self.here
    }

    /// Whether any partition is routed by a handoff.
    #[inline]
    pub fn any_handed(&self) -> bool {
        self.any_handed
    }

    /// Whether any partition is cold.
    #[inline]
    pub fn any_cold(&self) -> bool {
        self.any_cold
    }

    /// The partitions this node owns and is still catching up on.
    pub fn cold_partitions(&self) -> Vec<u32> {
        (0..self.cold.len() as u32)
            .filter(|&p| self.cold[p as usize])
            .collect()
    }

    /// Where the partition of key value `value` (its bytes) is decided and kept.
    #[inline]
    pub fn route(&self, value: &[u8]) -> Route {
        let p = partition_of(value, self.partitions) as usize;
        let node = self.owner[p];
        if Some(node) == self.here {
            Route::Here
        } else {
            Route::There {
                node,
                shard: self.shard[p],
            }
        }
    }

    /// The address of `node`'s shard `shard`, if that node is live.
    pub fn addr(&self, node: u16, shard: u16) -> Option<SocketAddr> {
        self.nodes[node as usize]
            .shards
            .as_ref()?
            .get(shard as usize)
            .copied()
    }

    /// The name of node `node`.
    pub fn name(&self, node: u16) -> &str {
        &self.nodes[node as usize].name
    }

    /// What a cluster-topology request (kind 0x07) answers.
    pub fn topology(&self) -> verdict_net::ClusterTopology {
        verdict_net::ClusterTopology {
            map_epoch: self.map_epoch,
            routing: verdict_net::routing::ROUTING_NAME.into(),
            partitions: self.partitions,
            nodes: self
                .nodes
                .iter()
                .map(|n| verdict_net::ClusterNode {
                    name: n.name.clone(),
                    address: n
                        .shards
                        .as_ref()
                        .and_then(|s| s.first())
                        .map_or(String::new(), |a| a.ip().to_string()),
                    shard_ports: n
                        .shards
                        .as_ref()
                        .map_or(Vec::new(), |s| s.iter().map(|a| a.port()).collect()),
                })
                .collect(),
            partition_nodes: self.owner.clone(),
            partition_shards: self.shard.clone(),
        }
    }

    /// Whether two views route alike (the version aside): publishing an equal one would only
    /// make every shard reload it.
    pub fn same_as(&self, other: &ClusterView) -> bool {
        let mut a = self.clone();
        a.version = other.version;
        a == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::assign;
    use std::collections::BTreeMap;

    fn info(name: &str, ports: &[u16]) -> NodeInfo {
        NodeInfo::starting(name, "127.0.0.1", 1, ports.to_vec())
    }

    #[test]
    fn a_view_routes_by_the_map_and_knows_who_is_gone() {
        let live: BTreeMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 1)].into();
        let map = assign(None, 64, &live, &[]).unwrap();
        // b's record is gone: its partitions route to b, with no address.
        let view = ClusterView::of("a", &map, &[info("a", &[7001, 7002])]);
        let mut here = 0;
        for i in 0..1000 {
            let key = format!("acct-{i}");
            let p = partition_of(key.as_bytes(), 64);
            let (node, shard) = map.owner_of(p);
            match view.route(key.as_bytes()) {
                Route::Here => {
                    assert_eq!(node, "a");
                    here += 1;
                }
                Route::There { node: n, shard: s } => {
                    assert_eq!((view.name(n), s), (node, shard));
                    assert_eq!(view.addr(n, s), None, "b is not live");
                }
            }
        }
        assert!(here > 500, "a owns two thirds: {here}");
        let a = view.nodes.iter().position(|n| n.name == "a").unwrap() as u16;
        assert_eq!(view.addr(a, 1), Some("127.0.0.1:7002".parse().unwrap()));
        assert!(view.same_as(&ClusterView::of("a", &map, &[info("a", &[7001, 7002])])));
        assert!(!view.same_as(&ClusterView::of("a", &map, &[])));
    }
}
