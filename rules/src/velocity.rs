//! Per-core velocity state: `count`, `sum` and `distinct` over sliding windows, per entity.
//!
//! One *entity table* per key the rule set counts by (account, device, IP, merchant) maps an
//! entity (its hashed key) to an index, and one *store* per distinct velocity function
//! (`sum(amount, account, 1h)`) holds a slot per entity of its key's table. All of it is
//! owned by one core and never shared. An event looks each of its keys up once, however many
//! functions count by it, then updates each function's slot:
//! - time is the event's own `timestamp_ms` (deterministic, and what a replay needs);
//! - a window of W is [`BUCKETS`] buckets of `ceil(W / BUCKETS)` ms. An earlier event counts
//!   while its bucket is one of the last `BUCKETS` buckets up to the decided event's bucket:
//!   always if it is at most `W - W/BUCKETS` old, never if it is more than `W` old (rounded up
//!   to whole buckets);
//! - the event being decided is recorded first, so it counts itself;
//! - `distinct` remembers at most [`DISTINCT_VALUES_MAX`] values per entity (the oldest is
//!   replaced), so it saturates there;
//! - an event older than the slot's window is evaluated but not recorded;
//! - an empty key (no device id, IP `0.0.0.0` / `::`) is not tracked: its values are 0.
//!
//! A cluster node tags each entity with the partition of its key (`set_partitions`), so
//! the windows of partitions it takes back can be forgotten before their history is
//! replayed ([`VelocityState::forget`]).
//!
//! Memory is bounded: at most `entities_max` entities per key. A new entity in a full table
//! evicts the least recently seen of [`EVICTION_SAMPLE`] random entities (sampled LRU, as
//! Redis does), and with it the entity's slot in every function of that key, so the hot set
//! stays and a flood of new keys cannot grow memory.
//! Entities are identified by a 64-bit seeded hash of the key (foldhash, seed random per
//! process), computed once per key per event whatever the number of functions: two keys
//! collide with probability about n²/2⁶⁵. Slots are reserved up front (virtual memory) and
//! never reallocated on the hot path. `count` and `sum` keep a running window total, so
//! reading the window of an in-order event costs no loop over the buckets.
//!
//! State survives a rule reload: stores are matched by the function's canonical text, and a
//! key's table stays while any function counts by it. The state keeps the layouts of the
//! last [`LAYOUTS_KEPT`] rule sets it served (which store each of their functions uses), so
//! a core can record an event for a shard still deciding with the previous epoch, or the
//! next one, without losing or resetting either epoch's windows: switching between kept
//! layouts allocates nothing.

use std::hash::BuildHasher;

use foldhash::fast::{RandomState, SeedableRandomState};

use crate::entity_index::EntityIndex;
use crate::ir::{Agg, VelocityKey, VelocitySpec};

/// Buckets per window.
pub const BUCKETS: usize = 32;
/// Values `distinct` remembers per entity.
pub const DISTINCT_VALUES_MAX: usize = 32;
/// Entities sampled to choose one to evict.
pub const EVICTION_SAMPLE: usize = 5;
/// Rule sets whose store layouts a state keeps: the current one and the one before, so
/// while a reload reaches the cores one by one, a core records for both epochs. (Memory: a
/// function dropped by a reload keeps its store until the next reload.)
pub const LAYOUTS_KEPT: usize = 2;

/// What one event adds to a store.
#[derive(Debug, Clone, Copy)]
pub enum Sample {
    Count,
    Sum(f64),
    /// A hash of the distinct value.
    Distinct(u64),
}

/// The hasher `distinct` hashes values with: one per process (random seed), so a value
/// hashed on the core that decides an event and recorded on the core that owns its key
/// compares equal to the same value hashed anywhere else.
pub fn value_hasher() -> &'static SeedableRandomState {
    static HASHER: std::sync::OnceLock<SeedableRandomState> = std::sync::OnceLock::new();
    HASHER.get_or_init(SeedableRandomState::random)
}

/// The velocity state of one core.
pub struct VelocityState {
    /// Per [`VelocityKey`] (as `usize`), while some store counts by it.
    tables: [Option<Table>; 4],
    /// Every store a kept layout uses.
    stores: Vec<Store>,
    /// The kept layouts; `layouts[current]` is the one `record_at` uses.
    layouts: Vec<LayoutOf>,
    current: usize,
    /// Bumped on every switch of layout: which layout was used least recently.
    switches: u64,
    entities_max: usize,
    hasher: RandomState,
    rng: fastrand::Rng,
    /// The rule set the current layout is for.
    prepared_for: u64,
    /// The partition count entities are tagged by (`fnv1a64(key) % partitions`); 0: none.
    partitions: u32,
}

/// Which store each velocity function of one rule set uses.
struct LayoutOf {
    uid: u64,
    /// `stores[spec]`: the index in `VelocityState::stores` of the rule set's function `spec`.
    stores: Vec<usize>,
    used_at: u64,
}

impl VelocityState {
    pub fn new(entities_max: usize) -> VelocityState {
        assert!(entities_max > 0 && entities_max <= u32::MAX as usize);
        VelocityState {
            tables: [None, None, None, None],
            stores: Vec::new(),
            layouts: Vec::new(),
            current: 0,
            switches: 0,
            entities_max,
            hasher: RandomState::default(),
            rng: fastrand::Rng::with_seed(0x5EED_7E10),
            prepared_for: u64::MAX,
            partitions: 0,
        }
    }

    /// Tags every entity made from now on with its key's partition of `partitions`.
    pub fn set_partitions(&mut self, partitions: u32) {
        self.partitions = partitions;
    }

    /// Empties every window of the entities whose partition `forget` names: their slots
    /// are cleared (the next event starts them over) and they are the first evicted.
    /// Returns how many were forgotten. Not for a hot path: it visits every entity.
    pub fn forget(&mut self, forget: impl Fn(u32) -> bool) -> usize {
        let mut n = 0;
        for (k, table) in self.tables.iter_mut().enumerate() {
            let Some(table) = table else {
                continue;
            };
            for (i, m) in table.meta.iter_mut().enumerate() {
                if !forget(m.partition) {
                    continue;
                }
                m.last_seen_ms = 0;
                for store in self.stores.iter_mut().filter(|s| s.key as usize == k) {
                    store.slots.clear(i, false);
                }
                n += 1;
            }
        }
        n
    }

    /// The rule set (by its `uid`) the stores are laid out for.
    pub fn prepared_for(&self) -> u64 {
        self.prepared_for
    }

    /// Lays the stores out for a rule set's velocity functions (`uid` names the set): a
    /// function a kept layout also has keeps its state; new ones start empty. A set whose
    /// layout is kept is switched to without allocating. Past [`LAYOUTS_KEPT`] layouts the
    /// least recently used is forgotten, and the stores only it used are dropped. Called
    /// between batches, or before recording for another core's rule set; never per event.
    pub fn prepare(&mut self, uid: u64, specs: &[VelocitySpec]) {
        self.switches += 1;
        if let Some(i) = self.layouts.iter().position(|l| l.uid == uid) {
            self.layouts[i].used_at = self.switches;
            self.current = i;
            self.prepared_for = uid;
            return;
        }
        for spec in specs {
            let table = &mut self.tables[spec.key as usize];
            if table.is_none() {
                *table = Some(Table::new(self.entities_max));
            }
        }
        let stores = specs
            .iter()
            .map(|spec| {
                self.stores
                    .iter()
                    .position(|s| s.id == spec.id)
                    .unwrap_or_else(|| {
                        let table = self.tables[spec.key as usize].as_ref().expect("made above");
                        let store = Store::new(spec, self.entities_max, table.meta.len());
                        self.stores.push(store);
                        self.stores.len() - 1
                    })
            })
            .collect();
        self.layouts.push(LayoutOf {
            uid,
            stores,
            used_at: self.switches,
        });
        if self.layouts.len() > LAYOUTS_KEPT {
            let oldest = (0..self.layouts.len())
                .min_by_key(|&i| self.layouts[i].used_at)
                .expect("more than one layout");
            self.layouts.swap_remove(oldest);
            self.drop_unused_stores();
        }
        self.current = self
            .layouts
            .iter()
            .position(|l| l.uid == uid)
            .expect("just pushed");
        self.prepared_for = uid;
    }

    /// Drops the stores no kept layout uses (renumbering the rest), and the tables of keys
    /// no store counts by.
    fn drop_unused_stores(&mut self) {
        let mut used = vec![false; self.stores.len()];
        for l in &self.layouts {
            for &s in &l.stores {
                used[s] = true;
            }
        }
        let mut renumbered = vec![usize::MAX; self.stores.len()];
        let mut next = 0;
        for (i, &u) in used.iter().enumerate() {
            if u {
                renumbered[i] = next;
                next += 1;
            }
        }
        let mut i = 0;
        self.stores.retain(|_| {
            i += 1;
            used[i - 1]
        });
        for l in &mut self.layouts {
            for s in &mut l.stores {
                *s = renumbered[*s];
            }
        }
        let mut keys = [false; 4];
        for s in &self.stores {
            keys[s.key as usize] = true;
        }
        for (table, used) in self.tables.iter_mut().zip(keys) {
            if !used {
                *table = None;
            }
        }
    }

    /// Records one event in store `spec` under `key` and returns the window's value for it.
    /// An empty key is not tracked and reads 0.
    #[inline]
    pub fn record(&mut self, spec: usize, key: &[u8], ts_ms: u64, sample: Sample) -> f64 {
        match self.key_hash(key) {
            Some(hash) => {
                let store = self.layouts[self.current].stores[spec];
                let entity = self.entity_of(self.stores[store].key, hash, key, ts_ms);
                self.record_at(spec, entity, ts_ms, sample)
            }
            None => 0.0,
        }
    }

    /// The entity hash of `key`; `None` for an empty key (not tracked).
    #[inline]
    pub fn key_hash(&self, key: &[u8]) -> Option<u64> {
        (!key.is_empty()).then(|| self.hasher.hash_one(key))
    }

    /// Starts loading where `key`'s table would find the entity `hash`: a batch calls this
    /// for every event's keys before recording the first, so the lookups' cache misses
    /// overlap instead of following one another. Only a hint; changes nothing.
    #[inline]
    pub fn prefetch(&self, key: VelocityKey, hash: u64) {
        if let Some(table) = &self.tables[key as usize] {
            table.index.prefetch(hash);
        }
    }

    /// The index of the entity `hash` (from [`key_hash`](Self::key_hash)) in `key`'s table,
    /// making room for it if it is new (evicting another, and clearing its slot in every
    /// function of `key`, when the table is full). Look each key up once per event, then
    /// [`record_at`](Self::record_at) each function.
    #[inline]
    pub fn entity(&mut self, key: VelocityKey, hash: u64, ts_ms: u64) -> u32 {
        self.entity_in(key, hash, ts_ms, || 0)
    }

    /// [`entity`](Self::entity) of the key value `value` (its bytes, whose hash `hash` is):
    /// a new entity is tagged with its partition (see [`set_partitions`](Self::set_partitions)).
    #[inline]
    pub fn entity_of(&mut self, key: VelocityKey, hash: u64, value: &[u8], ts_ms: u64) -> u32 {
        let partitions = self.partitions;
        self.entity_in(key, hash, ts_ms, || {
            if partitions == 0 {
                0
            } else {
                verdict_net::routing::partition_of(value, partitions)
            }
        })
    }

    #[inline]
    fn entity_in(
        &mut self,
        key: VelocityKey,
        hash: u64,
        ts_ms: u64,
        partition: impl FnOnce() -> u32,
    ) -> u32 {
        let table = self.tables[key as usize]
            .as_mut()
            .expect("prepared for a rule set counting by this key");
        if let Some(i) = table.index.get(hash) {
            let m = &mut table.meta[i as usize];
            m.last_seen_ms = m.last_seen_ms.max(ts_ms);
            return i;
        }
        let meta = Meta {
            key: hash,
            last_seen_ms: ts_ms,
            partition: partition(),
        };
        let (i, new) = if table.meta.len() < self.entities_max {
            table.meta.push(meta);
            (table.meta.len() - 1, true)
        } else {
            let len = table.meta.len();
            let victim = (0..EVICTION_SAMPLE)
                .map(|_| self.rng.usize(..len))
                .min_by_key(|&i| table.meta[i].last_seen_ms)
                .expect("a sample of at least one");
            table.index.remove(table.meta[victim].key);
            table.meta[victim] = meta;
            (victim, false)
        };
        table.index.insert(hash, i as u32);
        for store in self.stores.iter_mut().filter(|s| s.key == key) {
            store.slots.clear(i, new);
        }
        i as u32
    }

    /// Records one event in store `spec` for `entity` (from [`entity`](Self::entity) with
    /// the store's key) and returns the window's value for it.
    #[inline]
    pub fn record_at(&mut self, spec: usize, entity: u32, ts_ms: u64, sample: Sample) -> f64 {
        let store = self.layouts[self.current].stores[spec];
        self.stores[store].record(entity as usize, ts_ms, sample)
    }

    /// The keyed hasher `distinct` hashes values with (the process's, [`value_hasher`]).
    pub fn value_hasher(&self) -> &'static SeedableRandomState {
        value_hasher()
    }

    /// Entities tracked per function of the current layout (those of its key), for stats
    /// and tests.
    pub fn entities(&self) -> Vec<(String, usize)> {
        let Some(layout) = self.layouts.get(self.current) else {
            return Vec::new();
        };
        layout
            .stores
            .iter()
            .map(|&i| {
                let s = &self.stores[i];
                let table = self.tables[s.key as usize].as_ref();
                (s.id.clone(), table.map_or(0, |t| t.meta.len()))
            })
            .collect()
    }

    /// The most memory `specs` can take per core with `entities_max` entities per key:
    /// a slot per entity per function, and per key the entity table (its index is reserved
    /// at twice the entities, rounded up to a power of two, 16 bytes a slot).
    pub fn memory_bound_bytes(specs: &[VelocitySpec], entities_max: usize) -> usize {
        let mut keys = [false; 4];
        for s in specs {
            keys[s.key as usize] = true;
        }
        let tables = keys.iter().filter(|&&k| k).count();
        let slots: usize = specs.iter().map(|s| Slots::slot_bytes(s.agg)).sum();
        entities_max * slots
            + tables * (entities_max * size_of::<Meta>() + EntityIndex::bytes(entities_max))
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    key: u64,
    last_seen_ms: u64,
    /// Its key's partition (0 unless the state tags them).
    partition: u32,
}

/// The entities of one key: hash -> index, and when each was last seen.
struct Table {
    index: EntityIndex,
    meta: Vec<Meta>,
}

impl Table {
    fn new(entities_max: usize) -> Table {
        Table {
            index: EntityIndex::new(entities_max),
            meta: Vec::with_capacity(entities_max),
        }
    }
}

struct Store {
    id: String,
    key: VelocityKey,
    bucket_ms: u64,
    /// One slot per entity of the key's table, at the same index.
    slots: Slots,
}

enum Slots {
    Count(Vec<Buckets<u32>>),
    Sum(Vec<Buckets<f64>>),
    Distinct(Vec<DistinctSlot>),
}

impl Slots {
    fn slot_bytes(agg: Agg) -> usize {
        match agg {
            Agg::Count => size_of::<Buckets<u32>>(),
            Agg::Sum => size_of::<Buckets<f64>>(),
            Agg::Distinct => size_of::<DistinctSlot>(),
        }
    }

    /// Empties slot `i`: a new entity's (`new`: appended) or an evicted one's.
    fn clear(&mut self, i: usize, new: bool) {
        fn put<T: Copy>(v: &mut Vec<T>, i: usize, new: bool, empty: T) {
            if new {
                debug_assert_eq!(v.len(), i, "slots follow the entity table");
                v.push(empty);
            } else {
                v[i] = empty;
            }
        }
        match self {
            Slots::Count(s) => put(s, i, new, Buckets::EMPTY),
            Slots::Sum(s) => put(s, i, new, Buckets::EMPTY),
            Slots::Distinct(s) => put(s, i, new, DistinctSlot::EMPTY),
        }
    }
}

impl Store {
    /// A store for `spec`, with an empty slot for each of the `entities` its key's table
    /// already holds.
    fn new(spec: &VelocitySpec, entities_max: usize, entities: usize) -> Store {
        fn filled<T: Copy>(entities_max: usize, entities: usize, empty: T) -> Vec<T> {
            let mut v = Vec::with_capacity(entities_max);
            v.resize(entities, empty);
            v
        }
        let slots = match spec.agg {
            Agg::Count => Slots::Count(filled(entities_max, entities, Buckets::EMPTY)),
            Agg::Sum => Slots::Sum(filled(entities_max, entities, Buckets::EMPTY)),
            Agg::Distinct => Slots::Distinct(filled(entities_max, entities, DistinctSlot::EMPTY)),
        };
        Store {
            id: spec.id.clone(),
            key: spec.key,
            bucket_ms: spec.window_ms.div_ceil(BUCKETS as u64).max(1),
            slots,
        }
    }

    #[inline]
    fn record(&mut self, slot: usize, ts_ms: u64, sample: Sample) -> f64 {
        let bucket = ts_ms / self.bucket_ms;
        match (&mut self.slots, sample) {
            (Slots::Count(s), _) => {
                s[slot].add(bucket, 1);
                f64::from(s[slot].total(bucket))
            }
            (Slots::Sum(s), Sample::Sum(x)) => {
                s[slot].add(bucket, x);
                s[slot].total(bucket)
            }
            (Slots::Distinct(s), Sample::Distinct(h)) => {
                s[slot].add(bucket, h);
                s[slot].count(bucket) as f64
            }
            _ => unreachable!("the sample matches the store's function"),
        }
    }
}

/// A ring of per-bucket totals; `head` is the newest bucket number seen and `window` the
/// total of the whole ring (the window ending at `head`).
#[derive(Clone, Copy)]
struct Buckets<T> {
    head: u64,
    window: T,
    totals: [T; BUCKETS],
}

trait Total: Copy + Default + std::ops::AddAssign {
    const ZERO: Self;
    /// The sum of a whole ring, in a fixed order.
    fn sum(ring: &[Self; BUCKETS]) -> Self;
}
impl Total for u32 {
    const ZERO: u32 = 0;
    fn sum(ring: &[u32; BUCKETS]) -> u32 {
        ring.iter().sum()
    }
}
impl Total for f64 {
    const ZERO: f64 = 0.0;
    /// Four running sums, then combined: the same order every time (so deterministic),
    /// without one 32-long chain of dependent additions.
    fn sum(ring: &[f64; BUCKETS]) -> f64 {
        let mut lanes = [0.0; 4];
        for chunk in ring.chunks_exact(4) {
            for (lane, x) in lanes.iter_mut().zip(chunk) {
                *lane += x;
            }
        }
        (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    }
}

impl<T: Total> Buckets<T> {
    const EMPTY: Buckets<T> = Buckets {
        head: 0,
        window: T::ZERO,
        totals: [T::ZERO; BUCKETS],
    };

    fn add(&mut self, bucket: u64, x: T) {
        let b = BUCKETS as u64;
        if bucket > self.head {
            if bucket - self.head >= b {
                self.totals = [T::default(); BUCKETS];
            } else {
                for k in self.head + 1..=bucket {
                    self.totals[(k % b) as usize] = T::default();
                }
            }
            self.head = bucket;
            // Recomputed (not decremented) so float sums never drift. Every bucket in the
            // ring is in the window ending at the new head (the rest were just cleared): a
            // plain sum, no ring arithmetic.
            self.window = T::sum(&self.totals);
        }
        if self.head - bucket < b {
            self.totals[(bucket % b) as usize] += x;
            self.window += x;
        }
    }

    /// The window ending at `bucket`: buckets `bucket - BUCKETS + 1 ..= bucket` that are
    /// still in the ring.
    #[inline]
    fn total(&self, bucket: u64) -> T {
        if bucket == self.head {
            return self.window;
        }
        self.sum_ring(bucket)
    }

    fn sum_ring(&self, bucket: u64) -> T {
        let b = BUCKETS as u64;
        let lo = bucket
            .saturating_sub(b - 1)
            .max(self.head.saturating_sub(b - 1));
        let hi = bucket.min(self.head);
        let mut sum = T::default();
        if lo <= hi {
            for k in lo..=hi {
                sum += self.totals[(k % b) as usize];
            }
        }
        sum
    }
}

/// The distinct values of one entity with the bucket each was last seen in.
#[derive(Clone, Copy)]
struct DistinctSlot {
    /// The newest bucket seen: an event older than the ring before it is not recorded.
    head: u64,
    len: u8,
    values: [(u64, u64); DISTINCT_VALUES_MAX],
}

impl DistinctSlot {
    const EMPTY: DistinctSlot = DistinctSlot {
        head: 0,
        len: 0,
        values: [(0, 0); DISTINCT_VALUES_MAX],
    };

    fn add(&mut self, bucket: u64, hash: u64) {
        if bucket + (BUCKETS as u64) <= self.head {
            return;
        }
        self.head = self.head.max(bucket);
        let live = &mut self.values[..self.len as usize];
        if let Some(v) = live.iter_mut().find(|v| v.0 == hash) {
            v.1 = v.1.max(bucket);
            return;
        }
        if (self.len as usize) < DISTINCT_VALUES_MAX {
            self.values[self.len as usize] = (hash, bucket);
            self.len += 1;
            return;
        }
        let oldest = self
            .values
            .iter_mut()
            .min_by_key(|v| v.1)
            .expect("full, so not empty");
        if oldest.1 <= bucket {
            *oldest = (hash, bucket);
        }
    }

    /// Values last seen in the window ending at `bucket` (a value seen again later than a
    /// late event counts at its latest time only).
    fn count(&self, bucket: u64) -> usize {
        let lo = bucket.saturating_sub(BUCKETS as u64 - 1);
        self.values[..self.len as usize]
            .iter()
            .filter(|v| (lo..=bucket).contains(&v.1))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::VelocityKey;

    fn spec(agg: Agg, window_ms: u64) -> VelocitySpec {
        VelocitySpec {
            id: format!("{agg:?}-{window_ms}"),
            agg,
            key: VelocityKey::Account,
            window_ms,
            field: None,
        }
    }

    fn state(specs: &[VelocitySpec], entities_max: usize) -> VelocityState {
        let mut s = VelocityState::new(entities_max);
        s.prepare(1, specs);
        s
    }

    #[test]
    fn forgetting_partitions_empties_only_their_entities() {
        let count = spec(Agg::Count, 3_600_000);
        let sum = spec(Agg::Sum, 3_600_000);
        let mut s = state(&[count, sum], 64);
        s.set_partitions(16);
        let keys: Vec<String> = (0..40).map(|i| format!("acct-{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            s.record(0, k.as_bytes(), i as u64, Sample::Count);
            s.record(1, k.as_bytes(), i as u64, Sample::Sum(2.0));
        }
        let part = |k: &str| verdict_net::routing::partition_of(k.as_bytes(), 16);
        let gone = |p: u32| p.is_multiple_of(2);
        let forgotten = s.forget(gone);
        assert_eq!(
            forgotten,
            keys.iter().filter(|k| gone(part(k))).count(),
            "one per entity of those partitions"
        );
        assert!(forgotten > 0 && forgotten < keys.len());
        for k in &keys {
            // The next event counts itself only where its partition was forgotten, in every
            // function of the key.
            let (want_count, want_sum) = if gone(part(k)) {
                (1.0, 2.0)
            } else {
                (2.0, 4.0)
            };
            assert_eq!(
                s.record(0, k.as_bytes(), 100, Sample::Count),
                want_count,
                "{k}"
            );
            assert_eq!(
                s.record(1, k.as_bytes(), 100, Sample::Sum(2.0)),
                want_sum,
                "{k}"
            );
        }
        // Untagged (no partitions set), every entity is partition 0.
        let mut plain = state(&[spec(Agg::Count, 3_600_000)], 8);
        plain.record(0, b"a", 0, Sample::Count);
        assert_eq!(plain.forget(|p| p == 1), 0);
        assert_eq!(plain.forget(|p| p == 0), 1);
    }

    #[test]
    fn count_includes_the_event_itself_and_slides_by_buckets() {
        // 64 s window: 32 buckets of 2 s.
        let mut s = state(&[spec(Agg::Count, 64_000)], 10);
        assert_eq!(s.record(0, b"a", 100_000, Sample::Count), 1.0);
        assert_eq!(s.record(0, b"a", 101_999, Sample::Count), 2.0);
        // Bucket of 100_000 is 50; at 163_999 (bucket 81) the window is buckets 50..=81.
        assert_eq!(s.record(0, b"a", 163_999, Sample::Count), 3.0);
        // At 164_000 (bucket 82) bucket 50 has slid out.
        assert_eq!(s.record(0, b"a", 164_000, Sample::Count), 2.0);
        // Another entity is separate.
        assert_eq!(s.record(0, b"b", 164_000, Sample::Count), 1.0);
    }

    #[test]
    fn sum_adds_values_and_forgets_after_the_window() {
        let mut s = state(&[spec(Agg::Sum, 32_000)], 10);
        assert_eq!(s.record(0, b"a", 0, Sample::Sum(10.5)), 10.5);
        assert_eq!(s.record(0, b"a", 500, Sample::Sum(2.0)), 12.5);
        assert_eq!(s.record(0, b"a", 31_999, Sample::Sum(1.0)), 13.5);
        assert_eq!(s.record(0, b"a", 32_000, Sample::Sum(1.0)), 2.0);
        // Far later: everything before is gone.
        assert_eq!(s.record(0, b"a", 10_000_000, Sample::Sum(4.0)), 4.0);
    }

    #[test]
    fn late_events_count_in_their_own_window_and_too_old_ones_are_not_recorded() {
        let mut s = state(&[spec(Agg::Count, 32_000)], 10);
        s.record(0, b"a", 100_000, Sample::Count);
        // 20 s late: still in the ring, recorded; its window ends at its own bucket.
        assert_eq!(s.record(0, b"a", 80_000, Sample::Count), 1.0);
        assert_eq!(s.record(0, b"a", 100_000, Sample::Count), 3.0);
        // 40 s late: outside the ring, not recorded, and nothing in its window remains.
        assert_eq!(s.record(0, b"a", 60_000, Sample::Count), 0.0);
        assert_eq!(s.record(0, b"a", 100_000, Sample::Count), 4.0);
    }

    #[test]
    fn distinct_counts_values_in_the_window_and_saturates() {
        let mut s = state(&[spec(Agg::Distinct, 32_000)], 10);
        assert_eq!(s.record(0, b"a", 0, Sample::Distinct(1)), 1.0);
        assert_eq!(s.record(0, b"a", 1_000, Sample::Distinct(1)), 1.0);
        assert_eq!(s.record(0, b"a", 2_000, Sample::Distinct(2)), 2.0);
        // Value 1 last seen in bucket 1; at 33_000 (bucket 33) the window starts at 2.
        assert_eq!(s.record(0, b"a", 33_000, Sample::Distinct(3)), 2.0);
        for v in 0..100 {
            s.record(0, b"b", 50_000, Sample::Distinct(v));
        }
        assert_eq!(
            s.record(0, b"b", 50_000, Sample::Distinct(1000)),
            DISTINCT_VALUES_MAX as f64
        );
    }

    #[test]
    fn empty_keys_are_not_tracked() {
        let mut s = state(&[spec(Agg::Count, 60_000)], 10);
        assert_eq!(s.record(0, b"", 0, Sample::Count), 0.0);
        assert_eq!(s.entities()[0].1, 0);
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_seen_and_stays_bounded() {
        let mut s = state(&[spec(Agg::Count, 3_600_000)], 8);
        // One hot entity, seen at every step; a flood of cold ones.
        for i in 0..1_000u64 {
            let ts = 1_000_000 + i * 10;
            s.record(0, b"hot", ts, Sample::Count);
            s.record(0, format!("cold-{i}").as_bytes(), ts - 5, Sample::Count);
            assert!(s.entities()[0].1 <= 8);
        }
        // The hot entity was never the oldest in a sample: it kept all 1000 + this one.
        assert_eq!(s.record(0, b"hot", 1_010_000, Sample::Count), 1_001.0);
        // A cold entity that was evicted starts over.
        assert_eq!(s.record(0, b"cold-0", 1_010_000, Sample::Count), 1.0);
    }

    #[test]
    fn functions_of_one_key_share_its_entities_and_evictions() {
        let count = spec(Agg::Count, 3_600_000);
        let sum = spec(Agg::Sum, 3_600_000);
        let mut s = state(&[count, sum], 2);
        let entity = |s: &mut VelocityState, key: &[u8], ts| {
            let h = s.key_hash(key).unwrap();
            s.entity(VelocityKey::Account, h, ts)
        };
        let a = entity(&mut s, b"a", 0);
        assert_eq!(s.record_at(0, a, 0, Sample::Count), 1.0);
        assert_eq!(s.record_at(1, a, 0, Sample::Sum(7.0)), 7.0);
        let b = entity(&mut s, b"b", 10);
        s.record_at(0, b, 10, Sample::Count);
        // The same entity, looked up again, is the same slot in both functions.
        let a = entity(&mut s, b"a", 20);
        assert_eq!(s.record_at(0, a, 20, Sample::Count), 2.0);
        assert_eq!(s.record_at(1, a, 20, Sample::Sum(1.0)), 8.0);
        // A third entity in a table of two evicts the least recently seen (b) and clears
        // its slot in every function of the key.
        let c = entity(&mut s, b"c", 30);
        assert_eq!(c, b);
        assert_eq!(s.record_at(0, c, 30, Sample::Count), 1.0);
        assert_eq!(s.record_at(1, c, 30, Sample::Sum(2.0)), 2.0);
        assert!(s.entities().iter().all(|(_, n)| *n == 2));
    }

    #[test]
    fn a_function_added_by_a_reload_starts_empty_for_entities_already_tracked() {
        let count = spec(Agg::Count, 60_000);
        let mut s = state(std::slice::from_ref(&count), 10);
        s.record(0, b"a", 0, Sample::Count);
        s.record(0, b"b", 0, Sample::Count);
        let distinct = spec(Agg::Distinct, 60_000);
        s.prepare(2, &[count, distinct]);
        assert_eq!(s.record(0, b"a", 1, Sample::Count), 2.0);
        assert_eq!(s.record(1, b"a", 1, Sample::Distinct(9)), 1.0);
        assert_eq!(s.record(1, b"b", 1, Sample::Distinct(9)), 1.0);
        // A new entity gets a slot in both.
        assert_eq!(s.record(1, b"z", 1, Sample::Distinct(3)), 1.0);
        assert_eq!(s.record(0, b"z", 1, Sample::Count), 1.0);
    }

    #[test]
    fn state_survives_a_reload_for_functions_that_stay() {
        let kept = spec(Agg::Count, 60_000);
        let mut s = state(std::slice::from_ref(&kept), 10);
        s.record(0, b"a", 0, Sample::Count);
        let added = spec(Agg::Sum, 60_000);
        s.prepare(2, &[added, kept]);
        assert_eq!(s.prepared_for(), 2);
        assert_eq!(s.record(1, b"a", 1, Sample::Count), 2.0);
        assert_eq!(s.record(0, b"a", 1, Sample::Sum(5.0)), 5.0);
    }

    /// While a reload reaches the cores one by one, a core records for the old epoch and the
    /// new one in turn: both keep their windows, and a function the new set dropped is still
    /// there for the old one until a third set pushes the old layout out.
    #[test]
    fn kept_layouts_switch_back_and_forth_without_losing_windows() {
        let shared = spec(Agg::Count, 60_000);
        let mut dropped = spec(Agg::Sum, 60_000);
        dropped.id = "sum(amount, account, 1m)".into();
        let mut s = state(&[shared.clone(), dropped.clone()], 10);
        assert_eq!(s.record(1, b"a", 0, Sample::Sum(1.0)), 1.0);
        s.prepare(2, std::slice::from_ref(&shared));
        assert_eq!(s.record(0, b"a", 0, Sample::Count), 1.0);
        s.prepare(1, &[shared.clone(), dropped.clone()]);
        assert_eq!(s.record(0, b"a", 0, Sample::Count), 2.0);
        assert_eq!(s.record(1, b"a", 0, Sample::Sum(1.0)), 2.0);
        s.prepare(2, std::slice::from_ref(&shared));
        assert_eq!(s.record(0, b"a", 0, Sample::Count), 3.0);
        // A third rule set: the least recently used layout (1) goes, and its sum with it.
        s.prepare(3, std::slice::from_ref(&shared));
        assert_eq!(s.stores.len(), 1);
        s.prepare(1, &[shared, dropped]);
        assert_eq!(s.record(0, b"a", 0, Sample::Count), 4.0);
        assert_eq!(s.record(1, b"a", 0, Sample::Sum(1.0)), 1.0);
    }
}
