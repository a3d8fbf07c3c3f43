//! The rule epoch: the one pointer every core shares. The control thread compiles the next
//! [`RuleSet`] (or whatever the engine publishes with it, e.g. rules plus models) off the data
//! cores and publishes it with one atomic store; each core compares the epoch number once per
//! batch (one atomic load) and, when it moved, takes the new set between batches. An old set
//! is freed when the last core lets go of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::RuleSet;

/// What an epoch cell publishes: it is told its epoch number when published.
pub trait Epoch {
    fn set_epoch(&mut self, epoch: u64);
}

impl Epoch for RuleSet {
    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }
}

pub struct EpochCell<T = RuleSet> {
    current: ArcSwap<T>,
    /// The current set's epoch: stored after the pointer, so a core that reads the new number
    /// then loads the new set.
    epoch: AtomicU64,
    /// Publishing is the control thread's; this keeps two publishers from interleaving.
    publishing: Mutex<()>,
}

impl<T: Epoch> EpochCell<T> {
    /// Starts at epoch 1 with `first`.
    pub fn new(mut first: T) -> EpochCell<T> {
        first.set_epoch(1);
        EpochCell {
            current: ArcSwap::from_pointee(first),
            epoch: AtomicU64::new(1),
            publishing: Mutex::new(()),
        }
    }

    /// The current epoch number (one atomic load: the per-batch check).
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The current rule set.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Makes `next` current under the next epoch number, which it returns.
    pub fn publish(&self, mut next: T) -> u64 {
        let _one_at_a_time = self
            .publishing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let epoch = self.epoch.load(Ordering::Relaxed) + 1;
        next.set_epoch(epoch);
        self.current.store(Arc::new(next));
        self.epoch.store(epoch, Ordering::Release);
        epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, load_default};

    #[test]
    fn publishing_moves_the_epoch_and_the_pointer_together() {
        let cell = EpochCell::new(load_default(&Options::shipped()).unwrap());
        assert_eq!(cell.epoch(), 1);
        let first = cell.load();
        assert_eq!(first.epoch, 1);
        let e = cell.publish(load_default(&Options::shipped()).unwrap());
        assert_eq!(e, 2);
        assert_eq!(cell.epoch(), 2);
        assert_eq!(cell.load().epoch, 2);
        // A core still holding epoch 1 keeps a valid set until it lets go.
        assert_eq!(first.epoch, 1);
        assert_eq!(Arc::strong_count(&first), 1);
    }
}
