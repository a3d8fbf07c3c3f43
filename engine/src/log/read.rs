//! Reading segments back: checking them (`verdict log verify`) and turning decision records
//! into rows (`verdict log export`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use serde_json::{Map, Value, json};
use verdict_net::{ArchivedEvaluateBatch, ArchivedEvent, Event};

use super::format::{
    self, DecisionRecord, EventBytes, PAYLOAD_BYTES_AT, Record, Segment, SegmentHeader, Step,
};

/// What checking one segment found.
#[derive(Debug)]
pub struct Check {
    pub path: PathBuf,
    pub header: Result<SegmentHeader, format::FormatError>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// A torn tail: (offset, bytes). What a crash mid-write leaves; not an error.
    pub torn: Option<(usize, usize)>,
    /// Bad records followed by intact ones: (offset, why, where reading resumed).
    pub corrupt: Vec<(usize, &'static str, usize)>,
    /// Records whose sequence number is not above the one before: (offset, seq).
    pub out_of_order: Vec<(usize, u64)>,
}

impl Check {
    /// Whether anything is wrong beyond a torn tail.
    pub fn failed(&self) -> bool {
        self.header.is_err() || !self.corrupt.is_empty() || !self.out_of_order.is_empty()
    }
}

/// Checks one segment; `seq_before`: the last sequence number of the shard's previous
/// segment (a record must be above it).
pub fn check(path: &Path, seq_before: Option<u64>) -> std::io::Result<Check> {
    Ok(check_bytes(path, &std::fs::read(path)?, seq_before))
}

/// [`check`] of a segment's bytes (`path` names it in the result).
pub fn check_bytes(path: &Path, bytes: &[u8], seq_before: Option<u64>) -> Check {
    let mut c = Check {
        path: path.to_path_buf(),
        header: SegmentHeader::decode(bytes),
        records: 0,
        first_seq: None,
        last_seq: None,
        torn: None,
        corrupt: Vec::new(),
        out_of_order: Vec::new(),
    };
    if c.header.is_err() {
        return c;
    }
    let mut last = seq_before;
    Segment { bytes }.walk(seq_before, |step| match step {
        Step::Record(r) => {
            if last.is_some_and(|l| r.seq <= l) {
                c.out_of_order.push((r.offset, r.seq));
            }
            c.records += 1;
            c.first_seq.get_or_insert(r.seq);
            c.last_seq = Some(r.seq);
            last = Some(r.seq);
        }
        Step::Corrupt {
            offset,
            why,
            resumed_at,
        } => c.corrupt.push((offset, why, resumed_at)),
        Step::Torn { offset, .. } => c.torn = Some((offset, bytes.len() - offset)),
    });
    c
}

/// Turns one shard's records into rows, in order: it remembers the epoch names and batch
/// payloads its decisions refer to.
#[derive(Default)]
pub struct Rows {
    epochs: HashMap<u64, Value>,
    payloads: HashMap<u64, AlignedVec<16>>,
}

/// Most batch payloads kept for the decisions that follow them.
const PAYLOADS_KEPT_MAX: usize = 64;

impl Rows {
    /// The row of `r`, if it is a decision (epoch and payload records are remembered).
    pub fn row(&mut self, r: &Record<'_>) -> Option<Value> {
        match r.kind {
            format::KIND_EPOCH => {
                if let Ok(v) = serde_json::from_slice::<Value>(&r.body[format::BODY_HEAD_LEN..]) {
                    let epoch = v["epoch"].as_u64().unwrap_or(0);
                    self.epochs.insert(epoch, v);
                }
                None
            }
            format::KIND_PAYLOAD => {
                if self.payloads.len() >= PAYLOADS_KEPT_MAX {
                    self.payloads.clear();
                }
                let mut copy = AlignedVec::<16>::new();
                copy.extend_from_slice(r.body.get(PAYLOAD_BYTES_AT..)?);
                self.payloads.insert(r.seq, copy);
                None
            }
            format::KIND_DECISION => Some(self.decision(r)),
            _ => None,
        }
    }

    fn decision(&self, r: &Record<'_>) -> Value {
        // An intact record (its checksum matched) whose counts do not fit its length was
        // not written by verdict: reported, never read past its end.
        let Some(d) = DecisionRecord::parse(r.body) else {
            return json!({"seq": r.seq, "record_error": "a decision record shorter than its counts"});
        };
        let epoch = d.epoch();
        let names = self.epochs.get(&epoch);
        let name = |list: &str, i: usize| -> Value {
            names
                .and_then(|n| n[list].get(i))
                .cloned()
                .unwrap_or_else(|| json!(format!("#{i}")))
        };
        let key = |list: &str, i: usize| -> String {
            name(list, i)
                .as_str()
                .map_or(format!("#{i}"), str::to_string)
        };
        let fired: Vec<Value> = d.fired().map(|i| name("rules", i as usize)).collect();
        let shadow: Vec<Value> = d.shadow().map(|i| name("rules", i as usize)).collect();
        let mut models = Map::new();
        let mut model_errors = Vec::new();
        for k in 0..d.models() {
            let (score, failed) = d.model(k);
            if failed {
                model_errors.push(json!(key("models", k)));
            }
            models.insert(key("models", k), json!(score));
        }
        let velocity: Map<String, Value> = d
            .velocity()
            .enumerate()
            .map(|(k, x)| (key("velocity", k), json!(x)))
            .collect();
        let action = ["allow", "review", "deny"][d.action() as usize];
        let mut row = Map::new();
        match self.event(&d) {
            Some(event) => {
                if let Value::Object(fields) = verdict_net::json::event_to_json(&event) {
                    row.extend(fields);
                }
            }
            None => {
                row.insert(
                    "event_error".into(),
                    json!("the event's bytes are missing or invalid"),
                );
            }
        }
        row.insert("action".into(), json!(action));
        row.insert("score".into(), json!(d.score()));
        row.insert("rules".into(), json!(fired));
        row.insert("shadow_rules".into(), json!(shadow));
        row.insert("models".into(), Value::Object(models));
        row.insert("model_errors".into(), json!(model_errors));
        row.insert("velocity".into(), Value::Object(velocity));
        row.insert("epoch".into(), json!(epoch));
        row.insert(
            "digest".into(),
            names.map_or(Value::Null, |n| n["digest"].clone()),
        );
        row.insert("shard".into(), json!(d.shard()));
        row.insert("seq".into(), json!(r.seq));
        row.insert("logged_at_ms".into(), json!(d.logged_at_ms()));
        Value::Object(row)
    }

    /// The decision's event.
    fn event(&self, d: &DecisionRecord<'_>) -> Option<Event> {
        self.with_event(d, |archived| {
            rkyv::deserialize::<Event, rkyv::rancor::Error>(archived).ok()
        })?
    }

    /// `f` of the decision's archived event: its own bytes (copied: a segment read into
    /// memory need not be 16-aligned), or its place in a batch payload record.
    fn with_event<T>(
        &self,
        d: &DecisionRecord<'_>,
        f: impl FnOnce(&ArchivedEvent) -> T,
    ) -> Option<T> {
        use rkyv::rancor::Error;
        match d.event()? {
            EventBytes::InRecord(bytes) => {
                let mut copy = AlignedVec::<16>::new();
                copy.extend_from_slice(bytes);
                let archived = rkyv::access::<ArchivedEvent, Error>(&copy).ok()?;
                Some(f(archived))
            }
            EventBytes::InPayload { payload_seq, index } => {
                let payload = self.payloads.get(&payload_seq)?;
                let batch = rkyv::access::<ArchivedEvaluateBatch, Error>(payload).ok()?;
                Some(f(batch.events.get(index as usize)?))
            }
        }
    }

    /// The distinct partitions (of `partitions`) of a decision record's event's keys
    /// (account, device, IP, merchant; empty ones have none), in that order, into `out`;
    /// nothing for another record or an event that cannot be read.
    pub fn key_partitions(&self, r: &Record<'_>, partitions: u32, out: &mut Vec<u32>) {
        use verdict_rules::VelocityKey::{Account, Device, Ip, Merchant};
        out.clear();
        if r.kind != format::KIND_DECISION {
            return;
        }
        let Some(d) = DecisionRecord::parse(r.body) else {
            return;
        };
        self.with_event(&d, |event| {
            let mut ip = [0u8; 16];
            for key in [Account, Device, Ip, Merchant] {
                if let Some(value) = verdict_rules::key_value(event, key, &mut ip) {
                    let p = verdict_net::routing::partition_of(value, partitions);
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        });
    }
}

/// Every intact record of a segment's bytes, in order (bad stretches skipped as `check`
/// skips them).
pub fn records(bytes: &[u8]) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    if SegmentHeader::decode(bytes).is_ok() {
        Segment { bytes }.walk(None, |step| {
            if let Step::Record(r) = step {
                out.push(r);
            }
        });
    }
    out
}
