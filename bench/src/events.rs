//! Seeded events with a realistic shape, or events from a JSON-lines file, pre-encoded into
//! request frames so the generator spends its time on I/O, not on serialization.
//!
//! Shape: 80% of events come from a hot set of 1,000 accounts, the rest from a long tail of
//! a million; amounts are Pareto-distributed (alpha 1.2, so a few are very large); six
//! currencies with their countries, weighted towards USD/EUR; three channels; five MCCs;
//! four features and two attributes each.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context;
use verdict_net::frame::encode_frame;
use verdict_net::{AttrValue, Attribute, Event, Kind, routing};

const CURRENCIES: [(&str, &str, u32); 6] = [
    ("USD", "US", 40),
    ("EUR", "DE", 25),
    ("GBP", "GB", 12),
    ("JPY", "JP", 10),
    ("CAD", "CA", 8),
    ("BRL", "BR", 5),
];
const CHANNELS: [&str; 3] = ["web", "app", "pos"];
const MCCS: [u16; 5] = [5411, 5812, 5999, 4829, 7995];
/// Accounts in the hot set.
pub const HOT_ACCOUNTS: u64 = 1_000;
/// Accounts in the long tail.
pub const TAIL_ACCOUNTS: u64 = 1_000_000;

/// A seeded event source.
pub struct EventGen {
    rng: fastrand::Rng,
    next_id: u64,
}

impl EventGen {
    pub fn new(seed: u64) -> EventGen {
        EventGen {
            rng: fastrand::Rng::with_seed(seed),
            next_id: 0,
        }
    }

    pub fn next_event(&mut self) -> Event {
        let r = &mut self.rng;
        let id = self.next_id;
        self.next_id += 1;
        let account = if r.f64() < 0.8 {
            r.u64(0..HOT_ACCOUNTS)
        } else {
            r.u64(0..TAIL_ACCOUNTS)
        };
        let total: u32 = CURRENCIES.iter().map(|c| c.2).sum();
        let mut pick = r.u32(0..total);
        let &(currency, country, _) = CURRENCIES
            .iter()
            .find(|c| {
                if pick < c.2 {
                    true
                } else {
                    pick -= c.2;
                    false
                }
            })
            .expect("weights cover the range");
        // Pareto(xm = 500 minor units, alpha = 1.2), capped at 10^9.
        let amount = (500.0 / (1.0 - r.f64()).powf(1.0 / 1.2)).min(1e9) as i64;
        Event {
            event_id: format!("evt-{id}"),
            timestamp_ms: 1_700_000_000_000 + id * 10,
            account_id: format!("acct-{account}"),
            merchant_id: format!("m-{}", r.u32(0..5_000)),
            amount_minor: amount,
            currency: currency.into(),
            country: country.into(),
            channel: CHANNELS[r.usize(0..CHANNELS.len())].into(),
            device_id: format!("d-{}", r.u32(0..100_000)),
            ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100 + r.u8(0..4), r.u8(1..255))),
            mcc: MCCS[r.usize(0..MCCS.len())],
            features: (0..4).map(|_| r.f64()).collect(),
            attributes: vec![
                Attribute {
                    name: "email_domain".into(),
                    value: AttrValue::Str(["example.com", "mail.test"][r.usize(0..2)].into()),
                },
                Attribute {
                    name: "account_age_days".into(),
                    value: AttrValue::Num(r.u32(0..3000) as f64),
                },
            ],
        }
    }
}

/// Reads events from a JSON-lines file.
pub fn events_from_file(path: &Path) -> anyhow::Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            verdict_net::json::event_from_json(l)
                .with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Encodes events as evaluate frames (id 0: the sender patches bytes 8..16).
pub fn encode_events(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|e| {
            encode_frame(Kind::Evaluate.request_byte(), 0, e)
                .expect("events encode")
                .to_vec()
        })
        .collect()
}

/// Where an evaluate frame's `timestamp_ms` sits (rkyv puts the root object at the end of
/// the payload, and the field at its fixed offset in `ArchivedEvent`); `None` if `frame` is
/// not one whole frame.
pub fn timestamp_at(frame: &[u8]) -> Option<usize> {
    use verdict_net::frame::{HEADER_LEN, Scan, scan};
    let Scan::Frame(at) = scan(frame, u32::MAX) else {
        return None;
    };
    let end = HEADER_LEN + at.header.len as usize;
    let root = end.checked_sub(std::mem::size_of::<verdict_net::ArchivedEvent>())?;
    Some(root + std::mem::offset_of!(verdict_net::ArchivedEvent, timestamp_ms))
}

/// `count` events whose account shard `shard` owns under `table` (all events when `shard`
/// is `None`).
pub fn events_for_shard(
    source: &mut dyn FnMut() -> Event,
    shard: Option<(u32, &routing::PartitionTable)>,
    count: usize,
) -> Vec<Event> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let e = source();
        if shard.is_none_or(|(s, table)| table.owner_of_account(&e.account_id) == s) {
            out.push(e);
        }
    }
    out
}

/// Plausible feature rows for the shipped example model `name` of `cols` features (amounts,
/// hours, counts; volatilities and horizons for `exposure_var`), row-major, seeded: what the
/// model benches score natively and in wasm.
pub fn model_rows(name: &str, cols: usize, n: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(11);
    (0..n * cols)
        .map(|i| match i % cols {
            0 => rng.f32() * 2000.0,
            1 if name == "exposure_var" => 0.01 + rng.f32() * 0.05,
            1 => rng.u32(0..24) as f32,
            2 if name == "exposure_var" => rng.u32(1..10) as f32,
            _ => rng.u32(0..12) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_at_finds_the_archived_field() {
        use verdict_net::frame::{HEADER_LEN, Scan, scan};
        let mut g = EventGen::new(5);
        let events: Vec<Event> = (0..20).map(|_| g.next_event()).collect();
        for (e, frame) in events.iter().zip(encode_events(&events)) {
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(&frame);
            let at = timestamp_at(&aligned).unwrap();
            let stamp = u64::from_le_bytes(aligned[at..at + 8].try_into().unwrap());
            assert_eq!(stamp, e.timestamp_ms);
            aligned[at..at + 8].copy_from_slice(&42u64.to_le_bytes());
            let Scan::Frame(f) = scan(&aligned, u32::MAX) else {
                panic!("one frame")
            };
            let payload = &aligned[HEADER_LEN..HEADER_LEN + f.header.len as usize];
            let archived =
                rkyv::access::<verdict_net::ArchivedEvent, rkyv::rancor::Failure>(payload).unwrap();
            assert_eq!(archived.timestamp_ms.to_native(), 42);
            assert_eq!(archived.event_id.as_str(), e.event_id);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let a: Vec<Event> = (0..50)
            .map({
                let mut g = EventGen::new(9);
                move |_| g.next_event()
            })
            .collect();
        let b: Vec<Event> = (0..50)
            .map({
                let mut g = EventGen::new(9);
                move |_| g.next_event()
            })
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn the_shape_is_heavy_tailed_and_hot() {
        let mut g = EventGen::new(1);
        let events: Vec<Event> = (0..20_000).map(|_| g.next_event()).collect();
        let hot = events
            .iter()
            .filter(|e| e.account_id[5..].parse::<u64>().unwrap() < HOT_ACCOUNTS)
            .count();
        assert!(hot > 15_000, "hot share {hot}");
        let mut amounts: Vec<i64> = events.iter().map(|e| e.amount_minor).collect();
        amounts.sort_unstable();
        let median = amounts[amounts.len() / 2];
        let p999 = amounts[amounts.len() * 999 / 1000];
        assert!(p999 > 50 * median, "median {median}, p99.9 {p999}");
        let currencies: std::collections::HashSet<&str> =
            events.iter().map(|e| e.currency.as_str()).collect();
        assert_eq!(currencies.len(), 6);
    }

    #[test]
    fn shard_filtering_keeps_only_owned_accounts() {
        let mut g = EventGen::new(3);
        let mut next = || g.next_event();
        let table = routing::PartitionTable::modulo(routing::PARTITIONS_DEFAULT, 2).unwrap();
        let events = events_for_shard(&mut next, Some((1, &table)), 100);
        assert!(
            events
                .iter()
                .all(|e| table.owner_of_account(&e.account_id) == 1)
        );
    }
}
