//! Handing a partition to another live node (a rebalance, a drain) without refusing its
//! events while the new owner replays its history. When a new map gives away a partition
//! this node decided with complete windows, and its new owner is live, this node goes on
//! deciding it and says so in its record (`handing_off`, with the shard that keeps it);
//! every node's view routes the partition here meanwhile ([`super::view::ClusterView::of`]),
//! clients' topology too. The new owner replays the partition's history up to the stream's
//! end (its windows *prepared*, not served) and lists it in its record's `prepared`. Then
//! this node lets go: its shards stop deciding the partition (their view routes it to the
//! new owner, which refuses its events, error 9, for the little that is left), and it keeps
//! the partition in its record's `releasing` until its shipper has appended everything
//! decided before that. The new owner then replays only what was appended after its first
//! read ([`super::replay::Start::After`]) and serves. The events of a moving partition are
//! refused for a beat or two and the tail's replay, rather than for the whole history's.
//!
//! A handoff ends unprepared after `cluster.handoff_max_ms` (0: no handoffs: the partition
//! waits cold for its whole replay, as after a failover). A node that ships nothing (no
//! decision log) hands nothing off: there is no history to prepare from.
//!
//! Only a node that certainly decided the partition until the new map may hand it off, or
//! two nodes could decide it: so a handoff starts only from a map this node read as the
//! direct successor of the one it routed by, never after it fenced itself in between (its
//! record may have expired and a failover given its partitions to nodes that have served
//! them since), and only if its record saying so is written at once (the new owner waits
//! for that record, at most `node_ttl_ms`, before serving without it). A node that fences
//! itself lets go of every handoff at once (its record may expire, and the new owners then
//! serve), keeping them as released until what it decided is shipped. A release counts
//! from when the view that routes the partition away is published, not when decided.
//!
//! While a partition is handed off, the other nodes' events with a device, IP or merchant
//! in it (counted by the rules) are refused (error 9) rather than recorded at the old
//! owner: their record would reach the stream only with their own node's shipping, which
//! the new owner's last replay does not wait for. Events decided at the old owner record
//! such keys there and are shipped by it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use log::info;

use super::table::{NodeInfo, PartitionMap};

/// A release whose view is not published yet: the shards may still decide the partition.
const UNPUBLISHED: u64 = u64::MAX;

/// One partition being handed off.
struct Entry {
    /// The shard of this node that keeps it.
    shard: u16,
    since: Instant,
    /// When this node stopped deciding it (ms since the Unix epoch; [`UNPUBLISHED`] until
    /// the view that routes it away is published), if it has.
    released_ms: Option<u64>,
}

/// The partitions this node hands off.
pub struct Handoffs {
    entries: BTreeMap<u32, Entry>,
    max: Duration,
    /// How long after its view changes a shard may still decide (and log) by the old one.
    settle: Duration,
}

impl Handoffs {
    pub fn new(max: Duration, settle: Duration) -> Handoffs {
        Handoffs {
            entries: BTreeMap::new(),
            max,
            settle,
        }
    }

    /// Takes a map read now (`map`, after `old`): the partitions this node decided with
    /// complete windows (`warm`) under `old` that `map` gives another live node are handed
    /// off, if `map` directly follows `old` and this node has not fenced itself since it
    /// read `old` (`unbroken`); those `map` gives back to this node are its own again.
    /// `ships`: whether this node ships its decisions (without, it hands nothing off).
    /// Returns whether it started any.
    #[allow(clippy::too_many_arguments)]
    pub fn follow(
        &mut self,
        me: &str,
        old: Option<&PartitionMap>,
        map: &PartitionMap,
        live: &[NodeInfo],
        warm: &[bool],
        ships: bool,
        unbroken: bool,
    ) -> bool {
        if self.max.is_zero() || !ships || map.partitions as usize != warm.len() {
            self.entries.clear();
            return false;
        }
        // Given back: its own again, unless already let go (then it ships what it decided
        // before it replays the partition like any other cold one).
        self.entries
            .retain(|&p, e| e.released_ms.is_some() || map.owner_of(p).0 != me);
        let Some(old) =
            old.filter(|o| unbroken && o.epoch + 1 == map.epoch && o.partitions == map.partitions)
        else {
            return false;
        };
        let now = Instant::now();
        let before = self.entries.len();
        for p in 0..map.partitions {
            let (was, shard) = old.owner_of(p);
            let (owner, _) = map.owner_of(p);
            if was == me && owner != me && warm[p as usize] && live.iter().any(|n| n.node == owner)
            {
                self.entries.entry(p).or_insert(Entry {
                    shard,
                    since: now,
                    released_ms: None,
                });
            }
        }
        self.entries.len() > before
    }

    /// Drops the handoffs not let go yet that began at or after `since`: their record could
    /// not be written at once (nothing was decided by them: their view is not published).
    pub fn drop_since(&mut self, since: Instant) {
        self.entries
            .retain(|_, e| e.released_ms.is_some() || e.since < since);
    }

    /// Lets go of every handoff at once (this node fenced itself, `now_ms`: its shards
    /// decide nothing from now): they stay, released, until what they decided is shipped.
    pub fn release_all(&mut self, now_ms: u64) {
        for e in self.entries.values_mut() {
            if e.released_ms.is_none_or(|at| at == UNPUBLISHED) {
                e.released_ms = Some(now_ms);
            }
        }
    }

    /// Stamps the releases made since the last publish with `now_ms`: their view is out.
    pub fn published(&mut self, now_ms: u64) {
        for e in self.entries.values_mut() {
            if e.released_ms == Some(UNPUBLISHED) {
                e.released_ms = Some(now_ms);
            }
        }
    }

    /// Lets go of the partitions whose new owner (by `map`) has prepared them, or that have
    /// been handed off for `max`; forgets those let go once a pass of the shipper that began
    /// `settle` after (at `shipped_from_ms`) reached the end of every log. Returns how many
    /// it let go now.
    pub fn advance(
        &mut self,
        me: &str,
        map: &PartitionMap,
        live: &[NodeInfo],
        shipped_from_ms: u64,
    ) -> usize {
        let prepared: HashMap<&str, HashSet<u32>> = live
            .iter()
            .filter(|n| !n.prepared.is_empty())
            .map(|n| (n.node.as_str(), n.prepared.iter().copied().collect()))
            .collect();
        let mut released: BTreeMap<&str, usize> = BTreeMap::new();
        let mut late = 0;
        for (&p, entry) in &mut self.entries {
            if entry.released_ms.is_some() {
                continue;
            }
            let (owner, _) = map.owner_of(p);
            let ready = prepared.get(owner).is_some_and(|s| s.contains(&p));
            if ready || entry.since.elapsed() >= self.max {
                entry.released_ms = Some(UNPUBLISHED);
                *released.entry(owner).or_default() += 1;
                late += usize::from(!ready);
            }
        }
        let settle = self.settle.as_millis() as u64;
        self.entries.retain(|_, e| {
            e.released_ms
                .is_none_or(|at| at.saturating_add(settle) > shipped_from_ms)
        });
        let n = released.values().sum();
        if n > 0 {
            info!(
                "cluster: node {me} lets go of {n} partitions it handed off ({released:?}; \
                 {late} not prepared within cluster.handoff_max_ms)"
            );
        }
        n
    }

    /// Writes what this node hands off and releases into its record.
    pub fn write(&self, me: &mut NodeInfo) {
        me.handing_off.clear();
        me.releasing.clear();
        for (&p, e) in &self.entries {
            match e.released_ms {
                None => me.handing_off.push((p, e.shard)),
                Some(_) => me.releasing.push(p),
            }
        }
    }

    /// Whether any handoff is in progress (serving or releasing).
    pub fn any(&self) -> bool {
        !self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::assign;

    fn record(name: &str, shards: usize) -> NodeInfo {
        NodeInfo::starting(name, "127.0.0.1", 1, (0..shards as u16).collect())
    }

    #[test]
    fn a_partition_is_handed_off_until_prepared_then_released_until_shipped() {
        let one: BTreeMap<String, u32> = [("a".to_string(), 2)].into();
        let old = assign(None, 16, &one, &[]).unwrap();
        let two: BTreeMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 1)].into();
        let map = assign(Some(&old), 16, &two, &[]).unwrap();
        let moved: Vec<u32> = (0..16).filter(|&p| map.owner_of(p).0 == "b").collect();
        assert!(!moved.is_empty());
        let mut b = record("b", 1);
        let live = vec![record("a", 2), b.clone()];
        let mut h = Handoffs::new(Duration::from_secs(60), Duration::from_millis(100));
        let mut warm = vec![true; 16];
        warm[moved[0] as usize] = false;
        h.follow("a", Some(&old), &map, &live, &warm, true, true);
        let mut me = record("a", 2);
        h.write(&mut me);
        // Only what a served warm, each with the shard that keeps it.
        let handed: Vec<u32> = me.handing_off.iter().map(|&(p, _)| p).collect();
        assert_eq!(handed, moved[1..]);
        for &(p, s) in &me.handing_off {
            assert_eq!(s, old.owner_of(p).1);
        }
        // Nothing prepared: nothing let go.
        assert_eq!(h.advance("a", &map, &live, 0), 0);
        // b prepares all but one; those are released, kept until a pass that began
        // `settle` after shipped.
        b.prepared = moved[2..].to_vec();
        let live = vec![record("a", 2), b.clone()];
        assert_eq!(h.advance("a", &map, &live, 0), moved.len() - 2);
        h.write(&mut me);
        assert_eq!(me.handing_off.len(), 1);
        assert_eq!(me.releasing, moved[2..]);
        // Not shipped-after-settle until its view is published, however late the shipper.
        h.advance("a", &map, &live, u64::MAX - 1);
        h.write(&mut me);
        assert_eq!(me.releasing, moved[2..]);
        h.published(1_000);
        h.advance("a", &map, &live, 1_050);
        h.write(&mut me);
        assert_eq!(me.releasing.len(), moved.len() - 2);
        h.advance("a", &map, &live, 1_100);
        h.write(&mut me);
        assert!(me.releasing.is_empty());
        assert_eq!(me.handing_off.len(), 1);
        // A map that gives the last one back ends its handoff; one without logs hands
        // nothing off.
        let back = assign(Some(&map), 16, &one, &[]).unwrap();
        h.follow("a", Some(&map), &back, &live, &warm, true, true);
        assert!(!h.any());
        h.follow("a", Some(&old), &map, &live, &warm, false, true);
        assert!(!h.any());
        // Not from a map that skipped an epoch, nor after a fence; a fence drops them all.
        let mut later = map.clone();
        later.epoch += 1;
        assert!(!h.follow("a", Some(&old), &later, &live, &warm, true, true));
        assert!(!h.follow("a", Some(&old), &map, &live, &warm, true, false));
        assert!(h.follow("a", Some(&old), &map, &live, &warm, true, true));
        // A fence lets go of them all: released, kept until shipped.
        h.release_all(2_000);
        h.write(&mut me);
        assert!(me.handing_off.is_empty());
        assert_eq!(me.releasing.len(), moved.len() - 1);
        h.advance("a", &map, &live, 2_100);
        assert!(!h.any());
    }
}
