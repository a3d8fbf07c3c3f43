//! The index of one velocity key's entity table: entity hash -> entity number.
//!
//! Open addressing with linear probing over a power-of-two array of 16-byte slots holding the
//! hash and the number side by side, so a lookup that misses the cache costs one line, not
//! the two (control bytes, then the bucket) of a general-purpose map; and the slot an entity
//! would sit in is known from its hash alone, so a batch can prefetch every event's slot
//! before deciding any of them ([`EntityIndex::prefetch`]). Removal shifts the following run
//! back (no tombstones), so probe lengths never grow with evictions. The array is sized once
//! at construction for at least twice the entities it may hold and never grows.
//!
//! Hashes are keyed 64-bit hashes already; the index uses their low bits as they are. The
//! hash 0 marks an empty slot, so a key hashing to 0 is stored as 1 (two keys share an
//! entity then, as any two keys whose hashes collide do: probability about 2⁻⁶⁴ a pair).

/// One slot: `hash == EMPTY` when free.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    hash: u64,
    entity: u32,
}

const EMPTY: u64 = 0;

pub struct EntityIndex {
    slots: Box<[Slot]>,
    /// `slots.len() - 1`.
    mask: usize,
    len: usize,
}

impl EntityIndex {
    /// An index for at most `entities_max` entries, at most half full.
    pub fn new(entities_max: usize) -> EntityIndex {
        let slots = (2 * entities_max).max(8).next_power_of_two();
        // Zeroed memory straight from the allocator: pages are only touched as entities
        // arrive, so an index reserved for many entities costs address space, not RAM.
        // SAFETY: a Slot of zeros is a valid, empty slot (`hash == EMPTY`, two integers).
        let slots_zeroed = unsafe { Box::<[Slot]>::new_zeroed_slice(slots).assume_init() };
        const { assert!(EMPTY == 0) };
        EntityIndex {
            slots: slots_zeroed,
            mask: slots - 1,
            len: 0,
        }
    }

    /// Bytes of slot array an index for `entities_max` entries takes.
    pub fn bytes(entities_max: usize) -> usize {
        (2 * entities_max).max(8).next_power_of_two() * size_of::<Slot>()
    }

    #[inline]
    fn stored(hash: u64) -> u64 {
        if hash == EMPTY { 1 } else { hash }
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// Asks the processor to start loading the slot `hash` would be found in.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let slot = &self.slots[self.home(Self::stored(hash))];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it never faults and reads nothing into the program.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    #[inline]
    pub fn get(&self, hash: u64) -> Option<u32> {
        let hash = Self::stored(hash);
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.hash == hash {
                return Some(slot.entity);
            }
            if slot.hash == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `hash` (not present) -> `entity`.
    pub fn insert(&mut self, hash: u64, entity: u32) {
        assert!(
            self.len < self.slots.len() / 2,
            "the entity table never holds more than entities_max"
        );
        let hash = Self::stored(hash);
        let mut i = self.home(hash);
        while self.slots[i].hash != EMPTY {
            debug_assert_ne!(self.slots[i].hash, hash, "inserted twice");
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot { hash, entity };
        self.len += 1;
    }

    /// Removes `hash` if present, shifting back the entries after it that probed past it.
    pub fn remove(&mut self, hash: u64) {
        let hash = Self::stored(hash);
        let mut hole = self.home(hash);
        loop {
            match self.slots[hole].hash {
                EMPTY => return,
                h if h == hash => break,
                _ => hole = (hole + 1) & self.mask,
            }
        }
        self.len -= 1;
        let mut i = hole;
        loop {
            i = (i + 1) & self.mask;
            let slot = self.slots[i];
            if slot.hash == EMPTY {
                break;
            }
            // The entry at `i` may fill the hole unless its home lies cyclically in
            // (hole, i]: then it is already as close to home as it can be.
            let home = self.home(slot.hash);
            let stays = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !stays {
                self.slots[hole] = slot;
                hole = i;
            }
        }
        self.slots[hole].hash = EMPTY;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, lookups and removals agree with a HashMap, with hashes crowded into
    /// few home slots (long runs that wrap around the end) and the hash 0 among them.
    #[test]
    fn agrees_with_a_map_under_crowded_churn() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..50 {
            let max = 1 + rng.usize(..40);
            let mut index = EntityIndex::new(max);
            let mut model: HashMap<u64, u32> = HashMap::new();
            // Few distinct low bits, at the end of the array so runs wrap around to its
            // start: most keys share homes; the high bits keep them distinct.
            let slots = index.slots.len() as u64;
            let key = |rng: &mut fastrand::Rng| match rng.u8(..10) {
                0 => 0,
                _ => (rng.u64(..64) << 32) | ((slots - 3 + rng.u64(..4)) % slots),
            };
            for step in 0..2000u32 {
                let k = key(&mut rng);
                match model.get(&k) {
                    Some(&v) => {
                        assert_eq!(index.get(k), Some(v), "round {round} step {step}");
                        if rng.bool() {
                            index.remove(k);
                            model.remove(&k);
                        }
                    }
                    None => {
                        assert_eq!(index.get(k), None, "round {round} step {step}");
                        if model.len() < max {
                            index.insert(k, step);
                            model.insert(k, step);
                        } else if let Some(&victim) = model.keys().next() {
                            index.remove(victim);
                            model.remove(&victim);
                        }
                    }
                }
                assert_eq!(index.len(), model.len());
            }
            for (&k, &v) in &model {
                assert_eq!(index.get(k), Some(v));
            }
        }
    }

    #[test]
    fn never_more_than_half_full() {
        let mut index = EntityIndex::new(5);
        assert_eq!(EntityIndex::bytes(5), 16 * 16);
        for k in 1..=5 {
            index.insert(k, k as u32);
        }
        assert_eq!(index.len(), 5);
        assert!(index.slots.len() >= 10);
        index.prefetch(3);
        assert_eq!(index.get(3), Some(3));
    }
}
