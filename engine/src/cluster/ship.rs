//! The decision stream: the decision log's records, shipped from the files the shards
//! wrote to a replicated JetStream stream for consumers off the node (auditors,
//! warehouses). Nothing on a shard core is involved: the cluster thread follows each
//! shard's segments as they grow, turns each decision record into the row
//! `verdict log export` writes (event, decision, rule and model names, velocity values)
//! and publishes it.
//!
//! - Stream `VERDICT_DECISIONS`, subjects `verdict.decisions.<node>.<shard>`, replicated
//!   like the buckets.
//! - Stream `VERDICT_EVENTS`: the same rows under `verdict.events.<partition>`, once for
//!   each distinct partition of the event's keys (account, device, IP, merchant, whether or
//!   not the rules count by them today), so the node that takes a partition over reads
//!   every event that touched a window it keeps in that one subject ([`super::replay`]).
//! - Each message's id is `<node>.<shard>.<seq>` (the record's sequence number, which a
//!   shard never reuses, across restarts too; in `VERDICT_EVENTS` followed by `.<partition>`):
//!   the stream drops a message it has seen within its duplicate window, so a publish
//!   retried after a lost ack or a leader change is never a second copy.
//! - A node resumes after the last message of its subjects, so a restart ships the rest
//!   and nothing twice.
//! - What is logged but not yet acknowledged by the stream is the lag (`unshipped`); a slow
//!   or absent NATS only grows it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::broker::{StreamSpec, Streams};
use log::warn;

use crate::log::format::{self, At, Segment};
use crate::log::read::Rows;

/// The decision stream's name.
pub const STREAM: &str = "VERDICT_DECISIONS";

/// The event stream's name: the same rows, one subject per partition of their keys
/// (`verdict.events.<partition>`), for rebuilding a partition's state where it moves.
pub const EVENTS: &str = "VERDICT_EVENTS";

/// The decision stream and the subjects it takes.
pub const DECISIONS_SPEC: StreamSpec = StreamSpec {
    name: STREAM,
    subjects: "verdict.decisions.>",
};

/// The event stream and the subjects it takes.
pub const EVENTS_SPEC: StreamSpec = StreamSpec {
    name: EVENTS,
    subjects: "verdict.events.>",
};

/// Messages (up to five per record: its event under each key's partition, its decision)
/// published before their acknowledgements are awaited.
const IN_FLIGHT_MAX: usize = 512;

/// Bytes of a segment read per pass (doubled for a record larger than this).
const READ_BYTES: usize = 8 << 20;

/// Most time one call spends on one shard before returning (a backlog ships in slices).
const SHIP_SLICE: Duration = Duration::from_millis(200);

/// One shard's place in its log.
#[derive(Default)]
struct Place {
    /// The segment being read (its first sequence number and path).
    segment: Option<(u64, PathBuf)>,
    /// Where the next record starts in it.
    offset: usize,
    /// Names and batch payloads of the records read so far in this segment.
    rows: Rows,
    /// The last record the stream acknowledged (None: none yet).
    shipped: Option<u64>,
    /// The last decision record seen in the log.
    logged: Option<u64>,
    /// Every record up to this one (of any kind) is read and, if a decision, shipped.
    through: u64,
}

/// Follows every shard's log in `dir` and publishes to [`STREAM`].
pub struct Shipper<S: Streams> {
    node: String,
    dir: PathBuf,
    shards: u32,
    /// The cluster's partition count (`routing.partitions`), for the event subjects.
    partitions: u32,
    /// Where it ships to.
    streams: S,
    places: BTreeMap<u32, Place>,
    /// Whether the stream exists and each shard's resume point has been read.
    ready: bool,
    /// Per shard, the last record both streams hold, for answers that wait for it
    /// (`cluster.wait_for_append`).
    appended: Option<super::Appended>,
    /// Per shard, the last record its log has written (the shards say).
    logged: Option<super::Appended>,
}

impl<S: Streams> Shipper<S> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        streams: S,
        node: &str,
        dir: &Path,
        shards: u32,
        partitions: u32,
        appended: Option<super::Appended>,
        logged: Option<super::Appended>,
    ) -> Shipper<S> {
        Shipper {
            node: node.to_string(),
            dir: dir.to_path_buf(),
            shards,
            partitions,
            streams,
            places: BTreeMap::new(),
            ready: false,
            appended,
            logged,
        }
    }

    /// Tells the waiting answers of `shard` that its records up to `seq` are appended.
    fn note_appended(&self, shard: u32, seq: u64) {
        if let Some(a) = self.appended.as_ref().and_then(|a| a.get(shard as usize)) {
            a.fetch_max(seq, std::sync::atomic::Ordering::Release);
        }
    }

    fn subject(&self, shard: u32) -> String {
        format!("verdict.decisions.{}.{shard}", self.node)
    }

    /// Records logged and not yet acknowledged by the stream: by sequence number, from the
    /// last one each shard's log has written to the last one shipped (records of other kinds
    /// among them count too, so this bounds the decisions waiting from above; before the
    /// stream has answered once, all of the log counts).
    pub fn unshipped(&self) -> u64 {
        (0..self.shards)
            .map(|shard| {
                let place = self.places.get(&shard);
                let written = self
                    .logged
                    .as_ref()
                    .and_then(|l| l.get(shard as usize))
                    .map(|w| w.load(std::sync::atomic::Ordering::Relaxed));
                let logged = written.max(place.and_then(|p| p.logged)).unwrap_or(0);
                // Sequence numbers start at 1: with nothing shipped, that many are waiting.
                let done = place.map_or(0, |p| p.shipped.unwrap_or(0).max(p.through));
                logged.saturating_sub(done)
            })
            .sum()
    }

    /// Creates the stream if needed and reads where each shard's shipping stopped.
    async fn prepare(&mut self) -> Result<(), String> {
        self.streams
            .ensure(EVENTS_SPEC)
            .await
            .map_err(|e| format!("the event stream: {e}"))?;
        self.streams
            .ensure(DECISIONS_SPEC)
            .await
            .map_err(|e| format!("the decision stream: {e}"))?;
        for shard in 0..self.shards {
            let subject = self.subject(shard);
            // Only "no message" means nothing was shipped: any other failure (a leader
            // election, a timeout) must not send the whole log again.
            let last = self
                .streams
                .last_on(DECISIONS_SPEC, &subject)
                .await
                .map_err(|e| format!("reading where {subject} stopped: {e}"))?;
            let shipped = match last {
                Some(body) => Some(
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["seq"].as_u64())
                        .ok_or_else(|| format!("the last message on {subject} has no seq"))?,
                ),
                None => None,
            };
            // After a failure, resume from the last record acknowledged in order here if
            // that is lower: a leader change can lose record k while k+1.. are stored, and
            // re-sending k.. costs only duplicates the stream drops.
            let known = self.places.get(&shard).and_then(|p| p.shipped);
            let shipped = match (known, shipped) {
                (Some(k), Some(s)) => Some(k.min(s)),
                (k, s) => s.or(k),
            };
            let logged = self.places.get(&shard).and_then(|p| p.logged);
            if let Some(seq) = shipped {
                self.note_appended(shard, seq);
            }
            self.places.insert(
                shard,
                Place {
                    shipped,
                    logged,
                    ..Place::default()
                },
            );
        }
        self.ready = true;
        Ok(())
    }

    /// Ships what the shards logged since the last call; true if it reached the end of
    /// every shard's log (false: a slice ran out first). After any failure the next call
    /// first reads again where the stream stopped (acknowledgements lost in an outage must
    /// not become second copies once it is older than the duplicate window).
    pub async fn ship(&mut self) -> Result<bool, String> {
        if !self.ready {
            self.prepare().await?;
        }
        let mut at_end = true;
        for shard in 0..self.shards {
            match self.ship_shard(shard).await {
                Ok(end) => at_end &= end,
                Err(e) => {
                    self.ready = false;
                    return Err(e);
                }
            }
        }
        Ok(at_end)
    }

    /// One shard's part of [`ship`](Self::ship): true at the end of its log.
    async fn ship_shard(&mut self, shard: u32) -> Result<bool, String> {
        let segments = crate::log::segments(&self.dir, Some(shard))
            .map_err(|e| format!("listing {}: {e}", self.dir.display()))?;
        let subject = self.subject(shard);
        let node = self.node.clone();
        let partitions = self.partitions;
        let appended = self.appended.clone();
        let place = self.places.get_mut(&shard).expect("prepared");
        let mut key_partitions = Vec::with_capacity(4);
        let started = std::time::Instant::now();
        let mut read_len = READ_BYTES;
        if place.segment.is_none() {
            // The segment holding the record after the last shipped one.
            let after = place.shipped.map_or(0, |s| s + 1);
            let start = segments
                .iter()
                .rev()
                .find(|(_, first, _)| *first <= after)
                .or(segments.first());
            let Some((_, first, path)) = start else {
                return Ok(true);
            };
            place.segment = Some((*first, path.clone()));
            place.offset = format::HEADER_LEN;
            place.rows = Rows::default();
        }
        loop {
            let (first, path) = place.segment.clone().expect("set above");
            let later = segments.iter().find(|(_, f, _)| *f > first).cloned();
            if started.elapsed() >= SHIP_SLICE {
                // The rest next call: a backlog is shipped in slices.
                return Ok(false);
            }
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                // Removed by retention: go on with the next one.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("opening {}: {e}", path.display()));
                }
                Err(_) => match later {
                    Some((_, f, p)) => {
                        place.segment = Some((f, p));
                        place.offset = format::HEADER_LEN;
                        place.rows = Rows::default();
                        continue;
                    }
                    None => return Ok(true),
                },
            };
            // The unread tail, copied (not mapped: the writer truncates a segment's padding
            // when it closes it, and a mapped page past the end would be a SIGBUS). Offsets
            // below are from `place.offset`, a record boundary (16-aligned).
            let available = file
                .metadata()
                .map_err(|e| format!("reading {}: {e}", path.display()))?
                .len()
                .saturating_sub(place.offset as u64) as usize;
            let want = available.min(read_len);
            let mut tail = vec![0u8; want];
            {
                use std::os::unix::fs::FileExt;
                let n = file
                    .read_at(&mut tail, place.offset as u64)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                tail.truncate(n);
            }
            let capped = tail.len() < available;
            let segment = Segment { bytes: &tail };
            // Where `tail` starts in the file; `offset` is in `tail`.
            let base = place.offset;
            let mut offset = 0;
            // One read serves many windows of messages in flight: a window's acknowledgements
            // are awaited, then the next is published from the same bytes.
            let stop = loop {
                let mut pending = Vec::new();
                let mut read = None;
                let stop = loop {
                    match segment.at(offset) {
                        At::Record(r) => {
                            offset = Segment::after(&r);
                            read = Some(r.seq);
                            let Some(row) = place.rows.row(&r) else {
                                continue;
                            };
                            place.logged = Some(place.logged.map_or(r.seq, |l| l.max(r.seq)));
                            if place.shipped.is_some_and(|s| r.seq <= s) {
                                continue;
                            }
                            let id = format!("{node}.{shard}.{}", r.seq);
                            let body = bytes::Bytes::from(
                                serde_json::to_vec(&row).expect("a row serializes"),
                            );
                            // The event's partition subjects first, then the decision's: a
                            // record counts as shipped once all are acknowledged.
                            place
                                .rows
                                .key_partitions(&r, partitions, &mut key_partitions);
                            for &partition in &key_partitions {
                                let event_ack = self
                                    .streams
                                    .append(
                                        format!("verdict.events.{partition}"),
                                        &format!("{id}.{partition}"),
                                        body.clone(),
                                    )
                                    .await
                                    .map_err(|e| format!("publishing an event: {e}"))?;
                                pending.push((r.seq, false, event_ack));
                            }
                            let ack = self
                                .streams
                                .append(subject.clone(), &id, body)
                                .await
                                .map_err(|e| format!("publishing a decision: {e}"))?;
                            pending.push((r.seq, true, ack));
                            if pending.len() >= IN_FLIGHT_MAX {
                                break Stop::InFlight;
                            }
                        }
                        At::End => break Stop::End,
                        // Once the shard has moved on, bad bytes are corruption (skipped to
                        // the next intact record) or a torn tail; in the segment being
                        // written they are the record still arriving: wait for it.
                        // A record cut by the read's own limit: read on from here (or read
                        // more).
                        At::Bad { .. } if capped => {
                            if offset == 0 {
                                read_len = read_len.saturating_mul(2);
                            }
                            break Stop::Full;
                        }
                        At::Bad { offset: bad, .. } => {
                            match segment.next_valid(bad, place.logged) {
                                Some(r) if later.is_some() => offset = r.offset,
                                _ => break Stop::End,
                            }
                        }
                    }
                };
                // Acknowledged in order: the place moves only past what the stream holds.
                for (seq, decision, ack) in pending {
                    match ack.await {
                        // Shipped once its decision (published after its event) is in.
                        Ok(()) if decision => {
                            place.shipped = Some(seq);
                            if let Some(a) = appended.as_ref().and_then(|a| a.get(shard as usize)) {
                                a.fetch_max(seq, std::sync::atomic::Ordering::Release);
                            }
                        }
                        Ok(()) => {}
                        Err(e) => {
                            place.segment = None;
                            return Err(format!("the stream did not take record {seq}: {e}"));
                        }
                    }
                }
                place.offset = base + offset;
                if let Some(seq) = read {
                    place.through = place.through.max(seq);
                }
                match stop {
                    Stop::InFlight if started.elapsed() >= SHIP_SLICE => return Ok(false),
                    Stop::InFlight => {}
                    other => break other,
                }
            };
            match (stop, later) {
                (Stop::Full | Stop::InFlight, _) => continue,
                (Stop::End, Some((_, f, p))) => {
                    place.segment = Some((f, p));
                    place.offset = format::HEADER_LEN;
                    place.rows = Rows::default();
                }
                (Stop::End, None) => return Ok(true),
            }
        }
    }
}

/// Why reading a segment stopped.
enum Stop {
    /// [`IN_FLIGHT_MAX`] messages published: await them, then go on in the same bytes.
    InFlight,
    /// The read's bytes end inside a record: read on from there (more bytes if it was the
    /// first).
    Full,
    /// The end of what is written (or, in a finished segment, of the segment).
    End,
}

/// Logs a shipping failure at most once per `every` (a down NATS fails every beat).
pub fn warn_now_and_then(last: &mut Option<std::time::Instant>, every: Duration, message: &str) {
    if last.is_none_or(|at| at.elapsed() >= every) {
        warn!("cluster: decision stream: {message}");
        *last = Some(std::time::Instant::now());
    }
}
