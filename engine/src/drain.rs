//! The per-core shutdown signal. Everything that blocks on a socket (accept loops, idle
//! connections) races its wait against [`Waiter::drained`]; starting the drain wakes them all.
//!
//! Local to one core, so no atomics and no locks: each waiter owns one slot in a table
//! (taken when it registers, freed when it drops) and a wait only overwrites its slot's
//! waker, so waiting allocates nothing and the table never grows past the number of live
//! waiters.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    pub fn new() -> Rc<Drain> {
        Rc::new(Drain::default())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts the drain and wakes every waiter.
    pub fn start(&self) {
        self.draining.set(true);
        let wakers: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// A slot for one long-lived waiter.
    pub fn waiter(self: &Rc<Self>) -> Waiter {
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(None);
                slots.len() - 1
            }
        };
        Waiter {
            drain: self.clone(),
            slot,
        }
    }
}

/// One waiter's slot; freed on drop.
pub struct Waiter {
    drain: Rc<Drain>,
    slot: usize,
}

impl Waiter {
    /// Resolves once the drain has started.
    pub async fn drained(&self) {
        poll_fn(|cx| {
            if self.drain.draining.get() {
                return Poll::Ready(());
            }
            let mut slots = self.drain.slots.borrow_mut();
            match &mut slots[self.slot] {
                Some(w) if w.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.drain.slots.borrow_mut()[self.slot] = None;
        self.drain.free.borrow_mut().push(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn start_wakes_every_waiter_and_slots_are_reused() {
        let drain = Drain::new();
        let a = drain.waiter();
        let b = drain.waiter();
        assert_eq!(future::block_on(future::poll_once(a.drained())), None);
        assert_eq!(future::block_on(future::poll_once(b.drained())), None);
        drop(b);
        let c = drain.waiter();
        assert_eq!(drain.slots.borrow().len(), 2, "the freed slot is reused");
        drain.start();
        future::block_on(a.drained());
        future::block_on(c.drained());
        assert!(drain.is_draining());
    }
}
