//! Reading segments back: checking them (`verdict log verify`) and turning decision records
//! into rows (`verdict log export`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use serde_json::{Map, Value, json};
use verdict_net::{ArchivedEvaluateBatch, ArchivedEvent, Event};

use super::format::{
    self, PAYLOAD_BYTES_AT, Record, Segment, SegmentHeader, Step, decision as d, f64_at, u16_at,
    u32_at, u64_at,
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
    let bytes = std::fs::read(path)?;
    let mut c = Check {
        path: path.to_path_buf(),
        header: SegmentHeader::decode(&bytes),
        records: 0,
        first_seq: None,
        last_seq: None,
        torn: None,
        corrupt: Vec::new(),
        out_of_order: Vec::new(),
    };
    if c.header.is_err() {
        return Ok(c);
    }
    let mut last = seq_before;
    Segment { bytes: &bytes }.walk(seq_before, |step| match step {
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
    Ok(c)
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
        let b = r.body;
        // An intact record (its checksum matched) whose counts do not fit its length was
        // not written by verdict: reported, never read past its end.
        let fits = b.len() >= d::ARRAYS && {
            let n = |at| u16_at(b, at) as usize;
            let arrays =
                4 * (n(d::N_FIRED) + n(d::N_SHADOW)) + 9 * n(d::N_MODELS) + 8 * n(d::N_VELOCITY);
            b.len() >= d::ARRAYS + arrays
        };
        if !fits {
            return json!({"seq": r.seq, "record_error": "a decision record shorter than its counts"});
        }
        let epoch = u64_at(b, d::EPOCH);
        let names = self.epochs.get(&epoch);
        let (nf, ns, nm, nv) = (
            u16_at(b, d::N_FIRED) as usize,
            u16_at(b, d::N_SHADOW) as usize,
            u16_at(b, d::N_MODELS) as usize,
            u16_at(b, d::N_VELOCITY) as usize,
        );
        let name = |list: &str, i: usize| -> Value {
            names
                .and_then(|n| n[list].get(i))
                .cloned()
                .unwrap_or_else(|| json!(format!("#{i}")))
        };
        let mut at = d::ARRAYS;
        let mut indexes = |n: usize| -> Vec<usize> {
            let out = (0..n).map(|k| u32_at(b, at + 4 * k) as usize).collect();
            at += 4 * n;
            out
        };
        let fired: Vec<Value> = indexes(nf).into_iter().map(|i| name("rules", i)).collect();
        let shadow: Vec<Value> = indexes(ns).into_iter().map(|i| name("rules", i)).collect();
        let scores: Vec<f64> = (0..nm).map(|k| f64_at(b, at + 8 * k)).collect();
        at += 8 * nm;
        let failed: Vec<bool> = (0..nm).map(|k| b[at + k] != 0).collect();
        at += nm;
        let velocity: Vec<f64> = (0..nv).map(|k| f64_at(b, at + 8 * k)).collect();
        at += 8 * nv;
        let mut models = Map::new();
        let mut model_errors = Vec::new();
        for (k, (score, failed)) in scores.iter().zip(&failed).enumerate() {
            let n = name("models", k);
            let key = n.as_str().map_or(format!("#{k}"), str::to_string);
            if *failed {
                model_errors.push(json!(key));
            }
            models.insert(key, json!(score));
        }
        let mut vel = Map::new();
        for (k, x) in velocity.iter().enumerate() {
            let n = name("velocity", k);
            vel.insert(n.as_str().map_or(format!("#{k}"), str::to_string), json!(x));
        }
        let action = match b[d::ACTION] {
            0 => "allow",
            1 => "review",
            _ => "deny",
        };
        let mut row = Map::new();
        match self.event(b, at) {
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
        row.insert(
            "score".into(),
            json!(i32::from_le_bytes(
                b[d::SCORE..d::SCORE + 4].try_into().expect("4")
            )),
        );
        row.insert("rules".into(), json!(fired));
        row.insert("shadow_rules".into(), json!(shadow));
        row.insert("models".into(), Value::Object(models));
        row.insert("model_errors".into(), json!(model_errors));
        row.insert("velocity".into(), Value::Object(vel));
        row.insert("epoch".into(), json!(epoch));
        row.insert(
            "digest".into(),
            names.map_or(Value::Null, |n| n["digest"].clone()),
        );
        row.insert("shard".into(), json!(u16_at(b, d::SHARD)));
        row.insert("seq".into(), json!(r.seq));
        row.insert("logged_at_ms".into(), json!(u64_at(b, d::LOGGED_AT_MS)));
        Value::Object(row)
    }

    /// The decision's event: its own bytes (after the arrays, 16-aligned in the file), or
    /// its place in a batch payload record.
    fn event(&self, b: &[u8], arrays_end: usize) -> Option<Event> {
        use rkyv::rancor::Error;
        match b[d::EVENT_KIND] {
            d::EVENT_IN_RECORD => {
                let len = u32_at(b, d::EVENT_LEN) as usize;
                // The body starts 8 bytes into a 16-aligned record.
                let start = (arrays_end + 8).next_multiple_of(16) - 8;
                let mut copy = AlignedVec::<16>::new();
                copy.extend_from_slice(b.get(start..start + len)?);
                let archived = rkyv::access::<ArchivedEvent, Error>(&copy).ok()?;
                rkyv::deserialize::<Event, Error>(archived).ok()
            }
            _ => {
                let payload = self.payloads.get(&u64_at(b, d::PAYLOAD_SEQ))?;
                let batch = rkyv::access::<ArchivedEvaluateBatch, Error>(payload).ok()?;
                let archived = batch.events.get(u32_at(b, d::BATCH_INDEX) as usize)?;
                rkyv::deserialize::<Event, Error>(archived).ok()
            }
        }
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
