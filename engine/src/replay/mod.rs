//! `verdict replay`: a backtest. The events of a decision log are decided again under
//! another rule set, by the engine's own decision code, and compared with what was logged.
//!
//! 1. **Read** ([`Log::open`], [`Log::index`]): every segment memory-mapped (memmap2) and
//!    walked by every thread; each decision's event is checked in place as on receipt
//!    (bytecheck, then the field checks) and never copied. What cannot be read is skipped
//!    and counted ([`Skipped`]): a corrupt record, a decision whose event or epoch record is
//!    missing. Reading goes on past corruption, as `verdict log verify` does.
//! 2. **Order**: every event in event-time order; ties by shard, then sequence number.
//! 3. **Velocity**: fresh state, one per shard of the engine that wrote the log, each
//!    recording the key values whose partitions that shard owned, every event in event-time
//!    order: what each owner records live (`RuleSet::key_samples` / `record_samples`, the
//!    owners' own code), with the same `limits.velocity_entities_max`.
//! 4. **Decide**: the ordered events split into one run per thread, decided in batches by
//!    [`decide`] with every key's windows from step 3 (as a shard decides with the windows
//!    its peers recorded), scored by each thread's own model pools.
//! 5. **Compare** ([`report`]): action, score, rules, shadow rules, model scores (to the bit)
//!    and velocity values against the logged decision; with labels, precision and recall.
//!
//! Live and replay agree exactly when every key's events reached its owner in event-time
//! order. Where they did not (two shards' events for one device within a millisecond, a
//! late event, a restart that emptied the windows), the event saw other velocity values
//! live: the report counts those events (`velocity_differs`).

pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use memmap2::Mmap;
use rkyv::rancor::Failure;
use serde::Deserialize;
use verdict_net::routing::PartitionTable;
use verdict_net::validate::validate_event;
use verdict_net::{ArchivedEvaluateBatch, ArchivedEvent};
use verdict_rules::ir::Agg;
use verdict_rules::{Sample, VelocityKey, VelocityState, key_value};

use crate::decide::{Decided, Remote, Scratch, decide};
use crate::log::format::{
    self, DecisionRecord, EventBytes, PAYLOAD_BYTES_AT, Segment, SegmentHeader, Step,
};
use crate::scoring::{CoreModels, Published};
use report::{Labels, Report, Tally};

/// Events decided per call of [`decide`] (one model call scores up to this many).
const BATCH_EVENTS: usize = 256;

/// The four velocity keys, in `VelocityKey as usize` order.
const KEYS: [VelocityKey; 4] = [
    VelocityKey::Account,
    VelocityKey::Device,
    VelocityKey::Ip,
    VelocityKey::Merchant,
];

/// No owner: the event has no value for that key (it is not tracked).
const NO_OWNER: u16 = u16::MAX;

/// How a replay runs.
pub struct Options {
    /// Threads to read, record and decide with.
    pub threads: usize,
    /// `limits.velocity_entities_max`: each owner's velocity table, as live.
    pub entities_max: usize,
    pub labels: Option<Labels>,
}

/// The names an epoch record gives its decisions' indexes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EpochNames {
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub velocity: Vec<String>,
}

/// What reading skipped, and why.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Skipped {
    /// Segments whose header is unreadable (none of their records is read).
    pub bad_segments: u64,
    /// Stretches of bad bytes with intact records after them (reading resumed there).
    pub corrupt_stretches: u64,
    /// Torn tails (what a crash mid-write leaves; not an error).
    pub torn_tails: u64,
    /// Decision records whose counts do not fit them, or whose event's bytes are missing.
    pub bad_decisions: u64,
    /// Decisions whose epoch record is not in their segment.
    pub missing_epoch: u64,
    /// Decisions whose batch payload record is missing or unreadable.
    pub missing_payload: u64,
    /// Events that fail the checks every event passes on receipt.
    pub invalid_events: u64,
    /// Where, for the first few: `file: offset: why`.
    pub examples: Vec<String>,
}

/// Examples of skipped records kept in [`Skipped::examples`].
const SKIPPED_EXAMPLES_MAX: usize = 20;

impl Skipped {
    fn note(&mut self, path: &Path, offset: usize, why: &str) {
        if self.examples.len() < SKIPPED_EXAMPLES_MAX {
            self.examples
                .push(format!("{}: offset {offset}: {why}", path.display()));
        }
    }

    fn add(&mut self, o: &Skipped) {
        self.bad_segments += o.bad_segments;
        self.corrupt_stretches += o.corrupt_stretches;
        self.torn_tails += o.torn_tails;
        self.bad_decisions += o.bad_decisions;
        self.missing_epoch += o.missing_epoch;
        self.missing_payload += o.missing_payload;
        self.invalid_events += o.invalid_events;
        for e in &o.examples {
            if self.examples.len() < SKIPPED_EXAMPLES_MAX {
                self.examples.push(e.clone());
            }
        }
    }

    /// Decisions skipped (stretches and tails are counted apart: their records are unknown).
    pub fn decisions(&self) -> u64 {
        self.bad_decisions + self.missing_epoch + self.missing_payload + self.invalid_events
    }
}

/// A log's segments, memory-mapped.
pub struct Log {
    pub dir: PathBuf,
    segments: Vec<(PathBuf, Mmap)>,
}

/// One logged decision, as read: its event in place in the mapped segment.
pub struct Logged<'a> {
    pub event: &'a ArchivedEvent,
    /// The decision record's body ([`DecisionRecord`]).
    pub body: &'a [u8],
    pub ts: u64,
    pub seq: u64,
    /// Index into [`Index::names`].
    pub names: u32,
    pub shard: u16,
    /// Per key (`VelocityKey as usize`): the shard that owned its value's partition, or
    /// [`NO_OWNER`].
    pub owners: [u16; 4],
}

/// Every readable decision of a log, in event-time order.
pub struct Index<'a> {
    pub events: Vec<Logged<'a>>,
    /// The distinct epoch names the log's decisions were made under.
    pub names: Vec<EpochNames>,
    pub skipped: Skipped,
    pub segments: usize,
    /// The most shards of any segment's engine: the velocity owners replayed.
    pub shard_count: usize,
}

impl Log {
    /// Maps every segment in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Log> {
        let list = crate::log::segments(dir, None)
            .with_context(|| format!("reading {}", dir.display()))?;
        anyhow::ensure!(
            !list.is_empty(),
            "{} holds no decision log segments",
            dir.display()
        );
        let mut segments = Vec::with_capacity(list.len());
        for (_, _, path) in list {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the map is read-only and private; a segment is only ever appended to
            // (by a live engine) or cut at its torn tail (at start), never rewritten in
            // place, so the bytes read here do not change under the reader. Every record
            // is checked (CRC32C, then bytecheck) before use.
            let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
                .with_context(|| format!("mapping {}", path.display()))?;
            segments.push((path, map));
        }
        Ok(Log {
            dir: dir.to_path_buf(),
            segments,
        })
    }

    /// Reads every segment with `threads` threads, then orders the decisions by event time.
    /// `keys[k]`: whether the rules count by key `k` (only those keys' owners are found).
    pub fn index(&self, threads: usize, keys: [bool; 4]) -> Index<'_> {
        let next = AtomicUsize::new(0);
        let names: Mutex<Vec<EpochNames>> = Mutex::new(Vec::new());
        let mut parts: Vec<(usize, Vec<Logged<'_>>, Skipped, usize)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((path, map)) = self.segments.get(i) else {
                                break;
                            };
                            let (events, skipped, shards) = read_segment(path, map, &names, keys);
                            out.push((i, events, skipped, shards));
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a replay reader panicked"))
                .collect()
        });
        parts.sort_by_key(|p| p.0);
        let mut skipped = Skipped::default();
        let mut shard_count = 1;
        let mut events = Vec::with_capacity(parts.iter().map(|p| p.1.len()).sum());
        for (_, part, s, shards) in parts {
            events.extend(part);
            skipped.add(&s);
            shard_count = shard_count.max(shards);
        }
        // Each shard's segments are nearly in event-time order already: a stable sort
        // merges those runs.
        events.sort_by_key(|e| (e.ts, e.shard, e.seq));
        Index {
            events,
            names: names.into_inner().expect("no reader panicked"),
            skipped,
            segments: self.segments.len(),
            shard_count,
        }
    }
}

/// One segment's decisions, with what was skipped and the shard count of its engine.
/// `bytes` must start 16-aligned (a mapped file does) for events to be read in place.
pub(crate) fn read_segment<'a>(
    path: &Path,
    bytes: &'a [u8],
    names: &Mutex<Vec<EpochNames>>,
    keys: [bool; 4],
) -> (Vec<Logged<'a>>, Skipped, usize) {
    let mut skipped = Skipped::default();
    let mut out = Vec::new();
    let header = match SegmentHeader::decode(bytes) {
        Ok(h) => h,
        Err(e) => {
            skipped.bad_segments += 1;
            skipped.note(path, 0, &format!("bad header: {e}"));
            return (out, skipped, 1);
        }
    };
    let shards = u32::from(header.shard_count.max(1));
    let table = PartitionTable::modulo(header.partitions.max(shards), shards).ok();
    // Epochs and batch payloads this segment's decisions refer to.
    let mut epochs: HashMap<u64, u32> = HashMap::new();
    let mut payloads: HashMap<u64, &'a ArchivedEvaluateBatch> = HashMap::new();
    let mut ip = [0u8; 16];
    Segment { bytes }.walk(None, |step| match step {
        Step::Record(r) => match r.kind {
            format::KIND_EPOCH => {
                match serde_json::from_slice::<serde_json::Value>(&r.body[format::BODY_HEAD_LEN..])
                {
                    Ok(v) => {
                        let epoch = v["epoch"].as_u64().unwrap_or(0);
                        let parsed: EpochNames =
                            serde_json::from_value(v).unwrap_or_else(|_| EpochNames {
                                digest: String::new(),
                                rules: Vec::new(),
                                models: Vec::new(),
                                velocity: Vec::new(),
                            });
                        let mut all = names.lock().expect("no reader panicked");
                        let at = match all.iter().position(|n| *n == parsed) {
                            Some(at) => at,
                            None => {
                                all.push(parsed);
                                all.len() - 1
                            }
                        };
                        epochs.insert(epoch, at as u32);
                    }
                    Err(_) => skipped.note(path, r.offset, "an epoch record that is not JSON"),
                }
            }
            format::KIND_PAYLOAD => {
                match r
                    .body
                    .get(PAYLOAD_BYTES_AT..)
                    .and_then(|b| rkyv::access::<ArchivedEvaluateBatch, Failure>(b).ok())
                {
                    Some(batch) => {
                        payloads.insert(r.seq, batch);
                    }
                    None => skipped.note(path, r.offset, "a batch payload that does not check"),
                }
            }
            format::KIND_DECISION => {
                let Some(d) = DecisionRecord::parse(r.body) else {
                    skipped.bad_decisions += 1;
                    return skipped.note(
                        path,
                        r.offset,
                        "a decision record shorter than its counts",
                    );
                };
                let Some(&names_at) = epochs.get(&d.epoch()) else {
                    skipped.missing_epoch += 1;
                    return skipped.note(path, r.offset, "no epoch record before the decision");
                };
                let event = match d.event() {
                    None => {
                        skipped.bad_decisions += 1;
                        return skipped.note(path, r.offset, "the event's bytes do not fit");
                    }
                    Some(EventBytes::InRecord(b)) => rkyv::access::<ArchivedEvent, Failure>(b).ok(),
                    Some(EventBytes::InPayload { payload_seq, index }) => {
                        let Some(batch) = payloads.get(&payload_seq) else {
                            skipped.missing_payload += 1;
                            return skipped.note(path, r.offset, "its batch payload is missing");
                        };
                        batch.events.get(index as usize)
                    }
                };
                let Some(event) = event.filter(|e| validate_event(e).is_ok()) else {
                    skipped.invalid_events += 1;
                    return skipped.note(path, r.offset, "the event does not pass the checks");
                };
                let owners = std::array::from_fn(|k| {
                    if !keys[k] {
                        return NO_OWNER;
                    }
                    match (&table, key_value(event, KEYS[k], &mut ip)) {
                        (Some(t), Some(v)) => t.owner(v) as u16,
                        _ => NO_OWNER,
                    }
                });
                out.push(Logged {
                    event,
                    body: r.body,
                    ts: event.timestamp_ms.to_native(),
                    seq: r.seq,
                    names: names_at,
                    shard: header.shard,
                    owners,
                });
            }
            _ => {}
        },
        Step::Corrupt { offset, why, .. } => {
            skipped.corrupt_stretches += 1;
            skipped.note(path, offset, why);
        }
        Step::Torn { .. } => skipped.torn_tails += 1,
    });
    (out, skipped, shards as usize)
}

/// Steps 3 to 5 over `index`: returns the report.
pub fn replay(index: &Index<'_>, published: &Published, options: &Options) -> Report {
    let threads = options.threads.max(1);
    let rules = &published.rules;
    let per_key = rules.functions_by_key();
    let functions: usize = per_key.iter().sum();
    // Where each key's values start in an event's row of `functions` values.
    let mut key_at = [0usize; 4];
    for k in 1..4 {
        key_at[k] = key_at[k - 1] + per_key[k - 1];
    }
    let n = index.events.len();
    let run = n.div_ceil(threads).max(1);
    // What each function of each key adds: a sample's bits (`Sample` by the function's
    // aggregation), replaced by the window's value once the owner has recorded it.
    let aggs: Vec<Agg> = KEYS
        .iter()
        .flat_map(|&key| {
            rules
                .program()
                .velocity
                .iter()
                .filter(move |v| v.key == key)
                .map(|v| v.agg)
        })
        .collect();
    let began = Instant::now();
    let slots: Vec<AtomicU64> = (0..n * functions).map(|_| AtomicU64::new(0)).collect();
    // 3a. Every event's samples, once, each thread a run of events.
    std::thread::scope(|s| {
        for (c, chunk) in index.events.chunks(run).enumerate() {
            let slots = &slots;
            s.spawn(move || {
                let mut scratch = rules.outcome();
                let mut samples: Vec<Sample> = Vec::new();
                for (i, logged) in chunk.iter().enumerate() {
                    let row = (c * run + i) * functions;
                    let mut loaded = false;
                    for key in KEYS {
                        let k = key as usize;
                        if per_key[k] == 0 || logged.owners[k] == NO_OWNER {
                            continue;
                        }
                        if !std::mem::replace(&mut loaded, true) {
                            rules.load(logged.event, &mut scratch);
                        }
                        samples.clear();
                        rules.key_samples(logged.event, key, &scratch, &mut samples);
                        for (j, sample) in samples.iter().enumerate() {
                            let bits = match *sample {
                                Sample::Count => 0,
                                Sample::Sum(x) => x.to_bits(),
                                Sample::Distinct(h) => h,
                            };
                            slots[row + key_at[k] + j].store(bits, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    // 3b. Each owner records its keys' samples in event-time order.
    let owners = index.shard_count;
    std::thread::scope(|s| {
        for t in 0..threads.min(owners) {
            let (slots, aggs) = (&slots, &aggs);
            s.spawn(move || {
                // This thread stands in for owners t, t + threads, ...
                let mut states: Vec<VelocityState> = (t..owners)
                    .step_by(threads)
                    .map(|_| VelocityState::new(options.entities_max))
                    .collect();
                let (mut samples, mut values): (Vec<Sample>, Vec<f64>) = (Vec::new(), Vec::new());
                let mut ip = [0u8; 16];
                for (e, logged) in index.events.iter().enumerate() {
                    for key in KEYS {
                        let k = key as usize;
                        let owner = logged.owners[k] as usize;
                        if per_key[k] == 0 || owner % threads != t || owner >= owners {
                            continue;
                        }
                        let Some(value) = key_value(logged.event, key, &mut ip) else {
                            continue;
                        };
                        let row = e * functions + key_at[k];
                        samples.clear();
                        samples.extend((0..per_key[k]).map(|j| {
                            let bits = slots[row + j].load(Ordering::Relaxed);
                            match aggs[key_at[k] + j] {
                                Agg::Count => Sample::Count,
                                Agg::Sum => Sample::Sum(f64::from_bits(bits)),
                                Agg::Distinct => Sample::Distinct(bits),
                            }
                        }));
                        values.clear();
                        let state = &mut states[owner / threads];
                        rules.record_samples(key, value, logged.ts, &samples, state, &mut values);
                        for (j, v) in values.iter().enumerate() {
                            slots[row + j].store(v.to_bits(), Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let velocity_ms = began.elapsed().as_millis() as u64;
    let began = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let workers: Vec<_> =
            index
                .events
                .chunks(run)
                .enumerate()
                .map(|(c, chunk)| {
                    let slots = &slots;
                    s.spawn(move || {
                        let first = c * run;
                        let mut tally = Tally::new(index, published, options.labels.as_ref());
                        let mut models = CoreModels::new(published);
                        let mut state = VelocityState::new(1);
                        let clock = quanta::Clock::new();
                        let mut scratch = Scratch::default();
                        let mut decided = Decided::default();
                        let mut remote = Remote::default();
                        let mut events: Vec<&ArchivedEvent> = Vec::with_capacity(BATCH_EVENTS);
                        for (b, batch) in chunk.chunks(BATCH_EVENTS).enumerate() {
                            let start = first + b * BATCH_EVENTS;
                            events.clear();
                            events.extend(batch.iter().map(|l| l.event));
                            // Every key's windows, as its owner recorded them.
                            remote.clear();
                            remote.values.extend(
                                slots[start * functions..(start + batch.len()) * functions]
                                    .iter()
                                    .map(|x| f64::from_bits(x.load(Ordering::Relaxed))),
                            );
                            remote.at.extend((0..batch.len()).map(|i| {
                                std::array::from_fn(|k| (i * functions + key_at[k]) as u32)
                            }));
                            decided.clear();
                            decide(
                                &events,
                                published,
                                &mut state,
                                &remote,
                                &mut models,
                                &clock,
                                &mut scratch,
                                &mut decided,
                            );
                            models.refill();
                            for (i, logged) in batch.iter().enumerate() {
                                tally.add(logged, &decided, i, scratch.velocity(i));
                            }
                        }
                        tally
                    })
                })
                .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a replay worker panicked"))
            .collect()
    });
    let decide_ms = began.elapsed().as_millis() as u64;
    let mut report = Report::new(index, published, options.labels.as_ref());
    for t in &tallies {
        report.add(t);
    }
    report.finish(&tallies, options.labels.as_ref());
    report.timing.velocity_ms = velocity_ms;
    report.timing.decide_ms = decide_ms;
    report.timing.threads = threads;
    report
}
