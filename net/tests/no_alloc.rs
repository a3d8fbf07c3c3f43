//! Proves the codec half of the hot path allocates nothing once warm: validating an event in
//! place and encoding its decision (and a batch of them) into a reused buffer.
//!
//! Allocations are counted per thread: the test harness's own threads allocate when they
//! please (on a loaded machine that once landed 4 allocations inside the measured window),
//! and only the thread doing the work is under test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use rkyv::util::AlignedVec;
use verdict_net::frame::{FrameEncoder, Scan, scan};
use verdict_net::validate::validate_event;
use verdict_net::{
    Action, ArchivedEvent, DecisionBatchView, DecisionView, SliceView, StrView, test_event,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn counted() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn decide<'a>(event: &'a ArchivedEvent) -> DecisionView<'a> {
    DecisionView {
        event_id: StrView(event.event_id.as_str()),
        action: Action::Allow,
        score: 0,
        rules: SliceView(&[]),
        shadow_rules: SliceView(&[]),
        models: SliceView(&[]),
        epoch: 0,
        shard: 0,
        server_ns: 1,
    }
}

#[test]
fn validating_and_answering_allocates_nothing_once_warm() {
    let mut event = test_event("evt-0000000000000000000001", "acct-00000000000042", 129_900);
    event.features = vec![0.5; 8];
    let request = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
    let mut out = AlignedVec::<16>::with_capacity(1 << 20);
    let mut encoder = FrameEncoder::new();
    let mut views: Vec<DecisionView<'_>> = Vec::with_capacity(64);
    let mut round = |out: &mut AlignedVec<16>| {
        out.clear();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Failure>(&request).unwrap();
        validate_event(archived).unwrap();
        encoder.push(out, 0x82, 1, &decide(archived)).unwrap();
        views.clear();
        for _ in 0..64 {
            views.push(decide(archived));
        }
        encoder
            .push(
                out,
                0x83,
                2,
                &DecisionBatchView {
                    decisions: SliceView(&views),
                },
            )
            .unwrap();
    };
    for _ in 0..10 {
        round(&mut out);
    }
    let before = allocations();
    for _ in 0..10_000 {
        round(&mut out);
    }
    let after = allocations();
    assert_eq!(after - before, 0, "allocations on the warm path");
    assert!(matches!(scan(&out, 1 << 20), Scan::Frame(_)));
}
