//! A shard's connection memory, under one budget (`limits.connection_memory_bytes_max`).
//!
//! What a connection holds follows the bytes it has in flight, not its mere existence:
//! - a receive buffer of `limits.read_buffer_bytes` (small), grown only to fit a frame
//!   whose header passed the length limit and whose bytes are arriving, shrunk back once
//!   that frame is consumed ([`verdict_net::frame::RecvBuffer`]);
//! - a response buffer only while it has answers to write: taken from this shard's pool at
//!   the start of a batch, given back once written. Idle connections hold none.
//!
//! Every admitted connection reserves one receive and one response buffer at their base
//! size, so an admitted connection can always be answered; growth beyond that (a large
//! frame, a large batch of answers) must fit what is left of the budget. A connection that
//! cannot be admitted gets error 8 at accept; a frame that cannot be given room gets error 8
//! and its connection is closed (its bytes can no longer be skipped). The pool keeps at most
//! [`IDLE_BUFFERS_MAX`] idle response buffers of at most [`IDLE_BUFFER_BYTES_MAX`] each;
//! anything larger is freed when given back (and, allocated with mmap since it is over the
//! malloc threshold this module pins, goes straight back to the system).

use std::cell::{Cell, RefCell};

use rkyv::util::AlignedVec;
use verdict_net::frame::FRAME_ALIGN;

/// Idle response buffers a shard keeps for reuse.
pub const IDLE_BUFFERS_MAX: usize = 64;
/// Largest response buffer kept for reuse, bytes; larger ones are freed when given back.
pub const IDLE_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Allocations from this size up are mmapped by glibc malloc and unmapped on free.
pub const MMAP_THRESHOLD_BYTES: usize = 128 * 1024;

/// Pins glibc's mmap threshold: by default it rises after every large free, so buffers of a
/// burst of connections end up in the heap, where freed memory stays resident. Pinned, an
/// allocation of [`MMAP_THRESHOLD_BYTES`] or more is mapped on its own and unmapped on free.
pub fn pin_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; called once at start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int);
    }
}

/// Gives free heap pages back to the system (glibc); the control thread calls it after
/// connections closed, so memory returns after a burst without waiting for reuse.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it locks each arena as it walks it.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub struct Buffers {
    budget_bytes: u64,
    recv_base_bytes: u64,
    out_base_bytes: usize,
    /// Reserved and grown bytes of every open connection.
    in_use_bytes: Cell<u64>,
    idle: RefCell<Vec<AlignedVec<FRAME_ALIGN>>>,
}

impl Buffers {
    pub fn new(budget_bytes: u64, recv_base_bytes: u64, out_base_bytes: usize) -> Buffers {
        Buffers {
            budget_bytes,
            recv_base_bytes,
            out_base_bytes,
            in_use_bytes: Cell::new(0),
            idle: RefCell::new(Vec::new()),
        }
    }

    fn base_bytes(&self) -> u64 {
        self.recv_base_bytes + self.out_base_bytes as u64
    }

    pub fn in_use_bytes(&self) -> u64 {
        self.in_use_bytes.get()
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Admits a connection (reserves its base buffers) if they fit the budget.
    pub fn admit(&self) -> bool {
        let next = self.in_use_bytes.get() + self.base_bytes();
        if next > self.budget_bytes {
            return false;
        }
        self.in_use_bytes.set(next);
        true
    }

    /// Sets what a connection holds beyond its base from `*grown` to `to` bytes (a receive
    /// buffer grown for a large frame, or shrunk back); false, changing nothing, if growing
    /// would pass the budget.
    pub fn regrow(&self, grown: &mut u64, to: u64) -> bool {
        let others = self.in_use_bytes.get() - *grown;
        if to > *grown && others + to > self.budget_bytes {
            return false;
        }
        self.in_use_bytes.set(others + to);
        *grown = to;
        true
    }

    /// A connection ends: its base and whatever it had grown by.
    pub fn release(&self, grown: u64) {
        self.in_use_bytes
            .set(self.in_use_bytes.get() - grown - self.base_bytes());
    }

    /// A response buffer, from the pool when one is idle. Its base is already reserved.
    pub fn take_out(&self) -> AlignedVec<FRAME_ALIGN> {
        self.idle
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| AlignedVec::with_capacity(self.out_base_bytes))
    }

    /// Takes a written-out response buffer back (kept for reuse, or freed if large or the
    /// pool is full).
    pub fn give_back_out(&self, mut out: AlignedVec<FRAME_ALIGN>) {
        out.clear();
        let mut idle = self.idle.borrow_mut();
        if out.capacity() <= IDLE_BUFFER_BYTES_MAX && idle.len() < IDLE_BUFFERS_MAX {
            idle.push(out);
        }
    }

    /// Idle response buffers held for reuse.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// How large one batch's answers may grow, bytes: the base, plus what the budget has
    /// left, capped at `write_max`.
    pub fn out_cap(&self, write_max: usize) -> usize {
        let free = self.budget_bytes.saturating_sub(self.in_use_bytes.get());
        (self.out_base_bytes as u64 + free).min(write_max as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_and_growth_stay_within_the_budget() {
        // Room for three connections' bases (4 KiB + 4 KiB each) and 8 KiB to spare.
        let buffers = Buffers::new(32 * 1024, 4096, 4096);
        assert!(buffers.admit() && buffers.admit() && buffers.admit());
        assert_eq!(buffers.in_use_bytes(), 24 * 1024);
        // A fourth base fits (32 KiB exactly) but not a fifth.
        assert!(buffers.admit());
        assert!(!buffers.admit());
        buffers.release(0);
        let mut grown = 0;
        assert!(
            buffers.regrow(&mut grown, 8 * 1024),
            "exactly the spare 8 KiB"
        );
        assert!(
            !buffers.regrow(&mut grown, 8 * 1024 + 1),
            "one byte more does not fit"
        );
        assert_eq!(grown, 8 * 1024);
        assert_eq!(
            buffers.in_use_bytes(),
            32 * 1024,
            "a refused growth changes nothing"
        );
        assert_eq!(
            buffers.out_cap(1 << 20),
            4096,
            "nothing left to grow answers into"
        );
        assert!(buffers.regrow(&mut grown, 0), "shrinking always works");
        assert_eq!(buffers.out_cap(1 << 20), 4096 + 8 * 1024);
        assert_eq!(buffers.out_cap(5000), 5000);
        for _ in 0..3 {
            buffers.release(0);
        }
        assert_eq!(buffers.in_use_bytes(), 0);
    }

    #[test]
    fn the_pool_keeps_small_buffers_and_frees_large_ones() {
        let buffers = Buffers::new(1 << 30, 4096, 4096);
        let mut out = buffers.take_out();
        out.extend_from_slice(&[1; 100]);
        buffers.give_back_out(out);
        assert_eq!(buffers.idle_count(), 1);
        let again = buffers.take_out();
        assert!(again.is_empty(), "given back cleared");
        assert_eq!(buffers.idle_count(), 0);
        let mut big = again;
        big.extend_from_slice(&vec![0; IDLE_BUFFER_BYTES_MAX + 1]);
        buffers.give_back_out(big);
        assert_eq!(
            buffers.idle_count(),
            0,
            "a large buffer is freed, not pooled"
        );
        for _ in 0..IDLE_BUFFERS_MAX + 10 {
            buffers.give_back_out(AlignedVec::with_capacity(16));
        }
        assert_eq!(buffers.idle_count(), IDLE_BUFFERS_MAX);
    }
}
