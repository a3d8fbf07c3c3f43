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
use verdict_rules::{RuleSet, Sample, VelocityKey, VelocityState, key_value};

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
    pub epoch: u64,
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
    /// The most shards of any segment's engine: the velocity owners replayed.
    pub shard_count: usize,
}

/// One logged decision, as read: its event in place in the mapped segment.
pub struct Logged<'a> {
    pub event: &'a ArchivedEvent,
    /// The decision record's body ([`DecisionRecord`]).
    pub body: &'a [u8],
    pub ts: u64,
    pub seq: u64,
    /// Its row: [`Index::rows`]`[part][row * width..]` (see [`Index::row`]).
    pub part: u32,
    pub row: u32,
    /// Index into [`Index::names`].
    pub names: u32,
    pub shard: u16,
    /// Per key (`VelocityKey as usize`): the shard that owned its value's partition, or
    /// [`NO_OWNER`] (no value, or the rules do not count by that key).
    pub owners: [u16; 4],
}

/// What reading needs from the replay: the rules (each event's velocity samples are
/// computed as it is read, while its bytes are in cache) and the owners' velocity states
/// (each key value's entity hash is its owner's).
pub struct Prep<'r> {
    pub rules: &'r RuleSet,
    pub owners: &'r [VelocityState],
}

impl Prep<'_> {
    /// Values per row: an entity hash per key, then one slot per velocity function (key
    /// by key, in function order): first its sample's bits, then the window's value.
    fn width(&self) -> usize {
        4 + self.functions()
    }

    fn functions(&self) -> usize {
        self.rules.functions_by_key().iter().sum()
    }
}

/// Every readable decision of a log.
pub struct Index<'a> {
    /// In reading order (segment by segment).
    pub events: Vec<Logged<'a>>,
    /// `events` indexes in event-time order (see [`Index::ordered`]).
    pub order: Vec<u32>,
    /// Per segment read, per event in reading order: [`Prep::width`] values.
    rows: Vec<Vec<AtomicU64>>,
    width: usize,
    /// The distinct epoch names the log's decisions were made under.
    pub names: Vec<EpochNames>,
    pub skipped: Skipped,
    pub segments: usize,
    pub shard_count: usize,
}

impl<'a> Index<'a> {
    /// The decisions in event-time order.
    pub fn ordered(&self) -> impl Iterator<Item = &Logged<'a>> {
        self.order.iter().map(|&i| &self.events[i as usize])
    }

    /// `logged`'s row: its keys' entity hashes, then its functions' samples or values.
    fn row(&self, logged: &Logged<'_>) -> &[AtomicU64] {
        &self.rows[logged.part as usize][logged.row as usize * self.width..][..self.width]
    }
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
        let mut shard_count = 1;
        for (_, _, path) in list {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the map is read-only and private. A live engine only appends to a
            // segment (rewriting its last partial block with the same bytes and more);
            // only an engine starting on the same directory cuts a torn tail, so replay a
            // log no engine is starting on (README, Backtesting). Every record is checked
            // (CRC32C, then bytecheck) before use.
            let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
                .with_context(|| format!("mapping {}", path.display()))?;
            if let Ok(h) = SegmentHeader::decode(&map) {
                shard_count = shard_count.max(usize::from(h.shard_count));
            }
            segments.push((path, map));
        }
        Ok(Log {
            dir: dir.to_path_buf(),
            segments,
            shard_count,
        })
    }

    /// Reads every segment with `threads` threads, then orders the decisions by event time.
    pub fn index(&self, threads: usize, prep: &Prep<'_>) -> anyhow::Result<Index<'_>> {
        let next = AtomicUsize::new(0);
        let names: Mutex<Vec<EpochNames>> = Mutex::new(Vec::new());
        type Part<'a> = (usize, Vec<Logged<'a>>, Vec<AtomicU64>, Skipped);
        let mut parts: Vec<Part<'_>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((path, map)) = self.segments.get(i) else {
                                break;
                            };
                            let mut rows = Vec::new();
                            let (events, skipped) =
                                read_segment(path, map, &names, prep, i as u32, &mut rows);
                            out.push((i, events, rows, skipped));
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
        let n: usize = parts.iter().map(|p| p.1.len()).sum();
        anyhow::ensure!(
            u32::try_from(n).is_ok(),
            "{n} decisions: one replay reads at most {} (replay the log in parts: copy some of its segments to another directory)",
            u32::MAX
        );
        let mut events = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(parts.len());
        for (_, part, part_rows, s) in parts {
            events.extend(part);
            rows.push(part_rows);
            skipped.add(&s);
        }
        // In event-time order, ties by shard, then sequence number. `events` holds each
        // shard's decisions in sequence order (segments sort by shard, then sequence), so
        // sorting (time, shard, position) orders ties by sequence; 16-byte keys sort much
        // faster than the entries, which stay where they are.
        let mut keys: Vec<u128> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (u128::from(e.ts) << 64) | (u128::from(e.shard) << 32) | i as u128)
            .collect();
        keys.sort_unstable();
        let order = keys.into_iter().map(|k| k as u32).collect();
        Ok(Index {
            events,
            order,
            rows,
            width: prep.width(),
            names: names.into_inner().expect("no reader panicked"),
            skipped,
            segments: self.segments.len(),
            shard_count: self.shard_count,
        })
    }
}

/// One segment's decisions (what was skipped), each with its row appended to `rows`.
/// `bytes` must start 16-aligned (a mapped file does) for events to be read in place.
pub(crate) fn read_segment<'a>(
    path: &Path,
    bytes: &'a [u8],
    names: &Mutex<Vec<EpochNames>>,
    prep: &Prep<'_>,
    part: u32,
    rows: &mut Vec<AtomicU64>,
) -> (Vec<Logged<'a>>, Skipped) {
    let mut skipped = Skipped::default();
    // Room for the decisions of a segment of small records, so neither vector is copied as
    // it grows.
    let expect = bytes.len() / 256;
    let mut out = Vec::with_capacity(expect);
    rows.reserve(expect * prep.width());
    let header = match SegmentHeader::decode(bytes) {
        Ok(h) => h,
        Err(e) => {
            skipped.bad_segments += 1;
            skipped.note(path, 0, &format!("bad header: {e}"));
            return (out, skipped);
        }
    };
    let shards = u32::from(header.shard_count.max(1));
    let Ok(table) = PartitionTable::modulo(header.partitions, shards) else {
        skipped.bad_segments += 1;
        skipped.note(
            path,
            0,
            "a header whose partitions do not fit its shard count",
        );
        return (out, skipped);
    };
    let rules = prep.rules;
    let per_key = rules.functions_by_key();
    let width = prep.width();
    let mut key_at = [4usize; 4];
    for k in 1..4 {
        key_at[k] = key_at[k - 1] + per_key[k - 1];
    }
    let mut scratch = rules.outcome();
    let mut samples: Vec<Sample> = Vec::new();
    // Epochs and batch payloads this segment's decisions refer to.
    let mut epochs: HashMap<u64, u32> = HashMap::new();
    let mut payloads: HashMap<u64, &'a ArchivedEvaluateBatch> = HashMap::new();
    let mut ip = [0u8; 16];
    Segment { bytes }.walk(None, |step| match step {
        Step::Record(r) => match r.kind {
            format::KIND_EPOCH => {
                match serde_json::from_slice::<EpochNames>(&r.body[format::BODY_HEAD_LEN..]) {
                    Ok(parsed) => {
                        let mut all = names.lock().expect("no reader panicked");
                        let at = match all.iter().position(|n| *n == parsed) {
                            Some(at) => at,
                            None => {
                                all.push(parsed.clone());
                                all.len() - 1
                            }
                        };
                        epochs.insert(parsed.epoch, at as u32);
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
                // Its row: each key's owner and entity hash, and the samples that owner
                // will record.
                let row = rows.len();
                rows.resize_with(row + width, || AtomicU64::new(0));
                let mut owners = [NO_OWNER; 4];
                let mut loaded = false;
                for key in KEYS {
                    let k = key as usize;
                    if per_key[k] == 0 {
                        continue;
                    }
                    let Some(value) = key_value(event, key, &mut ip) else {
                        continue;
                    };
                    let owner = table.owner(value) as usize;
                    let Some(hash) = prep.owners.get(owner).and_then(|s| s.key_hash(value)) else {
                        continue;
                    };
                    owners[k] = owner as u16;
                    *rows[row + k].get_mut() = hash;
                    if !std::mem::replace(&mut loaded, true) {
                        rules.load(event, &mut scratch);
                    }
                    samples.clear();
                    rules.key_samples(event, key, &scratch, &mut samples);
                    for (j, sample) in samples.iter().enumerate() {
                        *rows[row + key_at[k] + j].get_mut() = match *sample {
                            Sample::Count => 0,
                            Sample::Sum(x) => x.to_bits(),
                            Sample::Distinct(h) => h,
                        };
                    }
                }
                out.push(Logged {
                    event,
                    body: r.body,
                    ts: event.timestamp_ms.to_native(),
                    seq: r.seq,
                    part,
                    row: (row / width) as u32,
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
    (out, skipped)
}

/// Reads `log` and replays it under `published` (steps 1 to 5): the report.
pub fn replay(log: &Log, published: &Published, options: &Options) -> anyhow::Result<Report> {
    let threads = options.threads.max(1);
    let rules = &published.rules;
    let owners = log.shard_count;
    let began = Instant::now();
    let states: Vec<VelocityState> = (0..owners)
        .map(|_| VelocityState::new(options.entities_max))
        .collect();
    let prep = Prep {
        rules,
        owners: &states,
    };
    let index = log.index(threads, &prep)?;
    let read_ms = began.elapsed().as_millis() as u64;
    let functions = prep.functions();
    let per_key = rules.functions_by_key();
    let mut key_at = [4usize; 4];
    for k in 1..4 {
        key_at[k] = key_at[k - 1] + per_key[k - 1];
    }
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
    // 3. Each owner records its keys' samples in event-time order; thread t stands in for
    // owners t, t + threads, ...
    let began = Instant::now();
    let mut groups: Vec<Vec<VelocityState>> = (0..threads).map(|_| Vec::new()).collect();
    for (owner, state) in states.into_iter().enumerate() {
        groups[owner % threads].push(state);
    }
    let index = &index;
    std::thread::scope(|s| {
        for (t, mut states) in groups.into_iter().enumerate() {
            if states.is_empty() {
                continue;
            }
            let aggs = &aggs;
            s.spawn(move || {
                let (mut samples, mut values): (Vec<Sample>, Vec<f64>) = (Vec::new(), Vec::new());
                for logged in index.ordered() {
                    let row = index.row(logged);
                    for key in KEYS {
                        let k = key as usize;
                        let owner = logged.owners[k] as usize;
                        if logged.owners[k] == NO_OWNER || owner % threads != t {
                            continue;
                        }
                        let at = key_at[k];
                        samples.clear();
                        samples.extend((0..per_key[k]).map(|j| {
                            let bits = row[at + j].load(Ordering::Relaxed);
                            match aggs[key_at[k] - 4 + j] {
                                Agg::Count => Sample::Count,
                                Agg::Sum => Sample::Sum(f64::from_bits(bits)),
                                Agg::Distinct => Sample::Distinct(bits),
                            }
                        }));
                        values.clear();
                        let hash = row[k].load(Ordering::Relaxed);
                        let state = &mut states[owner / threads];
                        rules.record_hashed(
                            key,
                            Some(hash),
                            logged.ts,
                            &samples,
                            state,
                            &mut values,
                        );
                        for (j, v) in values.iter().enumerate() {
                            row[at + j].store(v.to_bits(), Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let velocity_ms = began.elapsed().as_millis() as u64;
    // 4, 5. Each thread decides a run of events and tallies them.
    let began = Instant::now();
    let run = index.order.len().div_ceil(threads).max(1);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let workers: Vec<_> = index
            .order
            .chunks(run)
            .map(|chunk| {
                s.spawn(move || {
                    let mut tally = Tally::new(index, published, options.labels.as_ref());
                    let mut models = CoreModels::new(published);
                    let mut state = VelocityState::new(1);
                    let clock = quanta::Clock::new();
                    let mut scratch = Scratch::default();
                    let mut decided = Decided::default();
                    let mut remote = Remote::default();
                    let mut events: Vec<&ArchivedEvent> = Vec::with_capacity(BATCH_EVENTS);
                    let mut batch: Vec<&Logged<'_>> = Vec::with_capacity(BATCH_EVENTS);
                    for positions in chunk.chunks(BATCH_EVENTS) {
                        batch.clear();
                        batch.extend(positions.iter().map(|&i| &index.events[i as usize]));
                        events.clear();
                        events.extend(batch.iter().map(|l| l.event));
                        // Every key's windows, as its owner recorded them (0 where the
                        // event has no value for the key: its row was left 0).
                        remote.clear();
                        for (i, logged) in batch.iter().enumerate() {
                            remote.values.extend(
                                index.row(logged)[4..]
                                    .iter()
                                    .map(|x| f64::from_bits(x.load(Ordering::Relaxed))),
                            );
                            remote.at.push(std::array::from_fn(|k| {
                                (i * functions + key_at[k] - 4) as u32
                            }));
                        }
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
    report.timing.read_ms = read_ms;
    report.timing.velocity_ms = velocity_ms;
    report.timing.decide_ms = decide_ms;
    report.timing.threads = threads;
    Ok(report)
}
