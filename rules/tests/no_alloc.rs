//! Proves the rule half of the hot path allocates nothing once warm: `RuleSet::evaluate` of
//! the shipped default rule set over 10,000 varied events (new accounts and devices arriving
//! throughout, blocked devices, risky networks, attributes) makes zero heap allocations, both
//! while the velocity stores fill within their pre-reserved `entities_max` and while a full
//! store evicts an entity for every new one.
//!
//! Allocations are counted per thread, so tests running in parallel do not see each other's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use rkyv::util::AlignedVec;
use verdict_net::{Action, ArchivedEvent, AttrValue, Attribute, Event};
use verdict_rules::{Options, RuleSet, VelocityState};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn counted() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
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

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const EVENTS: usize = 10_000;

/// Event `i` of `accounts` distinct accounts (numbered from `first_account`), 37 ms apart,
/// with a mix that makes every shipped rule fire now and then.
fn event(i: usize, first_account: usize, accounts: usize) -> Event {
    let account = first_account + (i * 7919) % accounts;
    Event {
        event_id: format!("evt-{i:012}"),
        timestamp_ms: 1_700_000_000_000 + i as u64 * 37,
        account_id: format!("acct-{account:08}"),
        merchant_id: format!("m-{}", i % 13),
        amount_minor: [1_250, 9_900, 750_000, 60_000_000, 42][i % 5],
        currency: ["USD", "JPY", "KWD", "EUR"][i % 4].into(),
        country: ["US", "FR", "GB", "BR", "CA", "NG"][i % 6].into(),
        channel: ["web", "app", "pos"][i % 3].into(),
        device_id: match i % 50 {
            0 => "d-666".into(),
            1 => String::new(),
            _ => format!("d-{}", (i * 31) % 5_000),
        },
        ip: match i % 7 {
            0 => "203.0.113.77".parse().unwrap(),
            1 => "2001:db8:bad::9".parse().unwrap(),
            2 => "0.0.0.0".parse().unwrap(),
            3 => format!("::ffff:10.0.{}.{}", i % 256, (i / 256) % 256)
                .parse()
                .unwrap(),
            _ => format!("10.{}.{}.1", i % 256, (i / 256) % 256)
                .parse()
                .unwrap(),
        },
        mcc: [5411, 7995, 6051, 4829, 5812][i % 5],
        features: vec![0.25; i % 4],
        attributes: match i % 3 {
            0 => vec![],
            1 => vec![
                Attribute {
                    name: "account_age_days".into(),
                    value: AttrValue::Num((i % 30) as f64),
                },
                Attribute {
                    name: "email_verified".into(),
                    value: AttrValue::Bool(i.is_multiple_of(2)),
                },
            ],
            _ => vec![Attribute {
                name: "account_age_days".into(),
                value: AttrValue::Str("wrong type".into()),
            }],
        },
    }
}

fn archived(events: &[Event]) -> Vec<AlignedVec> {
    events
        .iter()
        .map(|e| rkyv::to_bytes::<rkyv::rancor::Error>(e).unwrap())
        .collect()
}

fn access(bytes: &[AlignedVec]) -> Vec<&ArchivedEvent> {
    bytes
        .iter()
        .map(|b| rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(b).unwrap())
        .collect()
}

/// Warms up on `warm` (laying out the velocity stores), then decides `measured` and returns
/// the allocations made doing so and how many events each action got.
fn run(
    rs: &RuleSet,
    state: &mut VelocityState,
    warm: &[&ArchivedEvent],
    measured: &[&ArchivedEvent],
) -> (u64, [usize; 3]) {
    let mut out = rs.outcome();
    for e in warm {
        rs.evaluate(e, state, &[], &mut out);
    }
    let mut actions = [0usize; 3];
    let before = allocations();
    for e in measured {
        rs.evaluate(e, state, &[], &mut out);
        actions[out.action() as usize] += 1;
    }
    (allocations() - before, actions)
}

fn default_rules() -> RuleSet {
    verdict_rules::load_default(&Options::shipped()).unwrap_or_else(|r| panic!("{r}"))
}

#[test]
fn the_default_rules_allocate_nothing_while_velocity_stores_fill() {
    let rs = default_rules();
    // 4,000 accounts met for the first time during the measured run, on top of 16 seen in
    // warm-up: well within the 8,192 entities each store reserved.
    let warm: Vec<Event> = (0..16).map(|i| event(i, 1_000_000, 16)).collect();
    let measured: Vec<Event> = (0..EVENTS).map(|i| event(i, 0, 4_000)).collect();
    let (warm, measured) = (archived(&warm), archived(&measured));
    let (warm, measured) = (access(&warm), access(&measured));
    let mut state = VelocityState::new(8_192);

    let (allocs, actions) = run(&rs, &mut state, &warm, &measured);
    assert_eq!(allocs, 0, "allocations while deciding {EVENTS} events");

    // The run did real work: every store grew, every action was taken.
    for (id, n) in state.entities() {
        assert_eq!(n, 4_016, "{id}");
    }
    assert!(
        actions.iter().all(|&n| n > 0),
        "allow/review/deny: {actions:?}"
    );
    assert!(actions[Action::Deny as usize] > 0);
}

#[test]
fn the_default_rules_allocate_nothing_while_full_velocity_stores_evict() {
    let rs = default_rules();
    // 4,000 accounts through stores of 256 entities: most events evict one.
    let warm: Vec<Event> = (0..512).map(|i| event(i, 1_000_000, 512)).collect();
    let measured: Vec<Event> = (0..EVENTS).map(|i| event(i, 0, 4_000)).collect();
    let (warm, measured) = (archived(&warm), archived(&measured));
    let (warm, measured) = (access(&warm), access(&measured));
    let mut state = VelocityState::new(256);

    let (allocs, actions) = run(&rs, &mut state, &warm, &measured);
    assert_eq!(allocs, 0, "allocations while deciding {EVENTS} events");

    for (id, n) in state.entities() {
        assert_eq!(n, 256, "{id}");
    }
    assert!(
        actions.iter().all(|&n| n > 0),
        "allow/review/deny: {actions:?}"
    );
}
