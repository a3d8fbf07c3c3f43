//! The decision log's bytes, pure (no I/O): the segment header, records, their checksums,
//! and a scanner that tells a torn tail from corruption. All integers little-endian.
//!
//! A segment is a 64-byte header followed by records. Every record starts 16-aligned:
//!
//! ```text
//! record:  len u32 | crc32c(body) u32 | body (len bytes) | zero padding to a multiple of 16
//! body:    seq u64 | kind u8 | 7 zero bytes | the kind's fields
//! ```
//!
//! Kinds: [`KIND_EPOCH`] (the names an epoch's decisions refer to, as JSON),
//! [`KIND_DECISION`] (one decision and the event it decided) and [`KIND_PAYLOAD`] (an
//! evaluate-batch payload as received, which decisions of its events refer to). Raw rkyv
//! archives (an event, a batch) sit at 16-aligned file offsets, so a memory-mapped segment
//! is read in place.

/// The first eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"VDLOG\0\0\0";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;
pub const RECORD_ALIGN: usize = 16;
/// `len` and `crc` before a record's body.
pub const RECORD_HEAD_LEN: usize = 8;
/// Bytes of a body before its kind's fields (seq, kind, reserved).
pub const BODY_HEAD_LEN: usize = 16;
/// The largest body a reader accepts (a larger length is corruption, not a record).
pub const BODY_LEN_MAX: u32 = 1 << 30;

pub const KIND_EPOCH: u8 = 1;
pub const KIND_DECISION: u8 = 2;
pub const KIND_PAYLOAD: u8 = 3;

/// Offsets of a decision body's fixed fields.
pub mod decision {
    pub const EPOCH: usize = 16;
    pub const LOGGED_AT_MS: usize = 24;
    /// 8 bytes, zero (reserved).
    pub const RESERVED: usize = 32;
    pub const SCORE: usize = 40;
    pub const ACTION: usize = 44;
    pub const EVENT_KIND: usize = 45;
    pub const N_FIRED: usize = 46;
    pub const N_SHADOW: usize = 48;
    pub const N_MODELS: usize = 50;
    pub const N_VELOCITY: usize = 52;
    pub const SHARD: usize = 54;
    pub const PAYLOAD_SEQ: usize = 56;
    pub const BATCH_INDEX: usize = 64;
    pub const EVENT_LEN: usize = 68;
    /// Where the arrays start: fired rule indexes (u32), shadow rule indexes (u32), model
    /// scores (f64), model failed flags (u8), velocity values (f64); then zero padding to
    /// the event bytes' 16-aligned file offset.
    pub const ARRAYS: usize = 72;
    /// `EVENT_KIND`: the event's own bytes follow the arrays.
    pub const EVENT_IN_RECORD: u8 = 0;
    /// `EVENT_KIND`: the event is `BATCH_INDEX` of the payload record `PAYLOAD_SEQ`.
    pub const EVENT_IN_PAYLOAD: u8 = 1;
}

/// Where a payload record's bytes start in its body (a 16-aligned file offset).
pub const PAYLOAD_BYTES_AT: usize = 24;

/// What a segment says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u16,
    pub shard_count: u16,
    pub partitions: u32,
    pub first_seq: u64,
    pub created_ms: u64,
}

/// Why bytes are not a segment or a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a verdict decision log segment (bad magic)")]
    Magic,
    #[error("segment format version {0}; this verdict reads version {VERSION}")]
    Version(u16),
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    #[error("shorter than a segment header ({0} bytes)")]
    Short(usize),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&self.shard.to_le_bytes());
        h[12..14].copy_from_slice(&self.shard_count.to_le_bytes());
        h[16..20].copy_from_slice(&self.partitions.to_le_bytes());
        h[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        h[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Short(bytes.len()));
        }
        if bytes[0..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        if crc32c::crc32c(&bytes[..60]) != u32_at(bytes, 60) {
            return Err(FormatError::HeaderChecksum);
        }
        let version = u16_at(bytes, 8);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        Ok(SegmentHeader {
            shard: u16_at(bytes, 10),
            shard_count: u16_at(bytes, 12),
            partitions: u32_at(bytes, 16),
            first_seq: u64_at(bytes, 24),
            created_ms: u64_at(bytes, 32),
        })
    }
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
pub fn f64_at(b: &[u8], at: usize) -> f64 {
    f64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends records to a buffer whose length is a multiple of 16 (a record starts there).
pub struct RecordWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> RecordWriter<'a> {
    /// Starts a record of `kind` with sequence number `seq` at the end of `out`.
    pub fn begin(out: &'a mut Vec<u8>, seq: u64, kind: u8) -> RecordWriter<'a> {
        debug_assert_eq!(out.len() % RECORD_ALIGN, 0, "records start 16-aligned");
        let start = out.len();
        out.extend_from_slice(&[0u8; RECORD_HEAD_LEN]);
        out.extend_from_slice(&seq.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&[0u8; 7]);
        RecordWriter { out, start }
    }

    /// The body's length so far.
    pub fn body_len(&self) -> usize {
        self.out.len() - self.start - RECORD_HEAD_LEN
    }

    pub fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Pads with zeros until the next byte sits at a 16-aligned offset from the record's
    /// start (so at a 16-aligned file offset).
    pub fn align(&mut self) {
        let len = self.out.len() - self.start;
        self.out
            .resize(self.start + len.next_multiple_of(RECORD_ALIGN), 0);
    }

    /// Writes the length and checksum, pads the record to 16 bytes; returns its length.
    pub fn finish(self) -> usize {
        let body_len = self.body_len();
        let body = self.start + RECORD_HEAD_LEN;
        let crc = crc32c::crc32c(&self.out[body..]);
        self.out[self.start..self.start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        self.out[self.start + 4..self.start + 8].copy_from_slice(&crc.to_le_bytes());
        let len = (self.out.len() - self.start).next_multiple_of(RECORD_ALIGN);
        self.out.resize(self.start + len, 0);
        len
    }
}

/// One record read from a segment.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Its offset in the segment.
    pub offset: usize,
    pub seq: u64,
    pub kind: u8,
    /// The whole body (its first 16 bytes are seq, kind and padding).
    pub body: &'a [u8],
}

/// What is at an offset of a segment.
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    Record(Record<'a>),
    /// Nothing more: the end of the segment.
    End,
    /// Not a whole, intact record: a torn tail or corruption (see [`Segment::next_valid`]).
    Bad {
        offset: usize,
        why: &'static str,
    },
}

/// A segment's bytes, read record by record.
pub struct Segment<'a> {
    pub bytes: &'a [u8],
}

impl<'a> Segment<'a> {
    /// The record at `offset` (16-aligned, at least [`HEADER_LEN`]).
    pub fn at(&self, offset: usize) -> At<'a> {
        let b = self.bytes;
        if offset >= b.len() {
            return At::End;
        }
        if b.len() - offset < RECORD_HEAD_LEN + BODY_HEAD_LEN {
            return At::Bad {
                offset,
                why: "a record's header runs past the end",
            };
        }
        let len = u32_at(b, offset);
        if len < BODY_HEAD_LEN as u32 || len > BODY_LEN_MAX {
            return At::Bad {
                offset,
                why: "impossible record length",
            };
        }
        let body_start = offset + RECORD_HEAD_LEN;
        let Some(body) = b.get(body_start..body_start + len as usize) else {
            return At::Bad {
                offset,
                why: "a record's body runs past the end",
            };
        };
        if crc32c::crc32c(body) != u32_at(b, offset + 4) {
            return At::Bad {
                offset,
                why: "record checksum mismatch",
            };
        }
        At::Record(Record {
            offset,
            seq: u64_at(body, 0),
            kind: body[8],
            body,
        })
    }

    /// The offset of the record after `r`.
    pub fn after(r: &Record<'_>) -> usize {
        (r.offset + RECORD_HEAD_LEN + r.body.len()).next_multiple_of(RECORD_ALIGN)
    }

    /// The first intact record after a bad one at `offset` whose sequence number is above
    /// `seq_after` (searched at every 16-aligned offset); `None` if there is none: the bad
    /// bytes are a torn tail.
    pub fn next_valid(&self, offset: usize, seq_after: Option<u64>) -> Option<Record<'a>> {
        let mut at = offset + RECORD_ALIGN;
        while at + RECORD_HEAD_LEN + BODY_HEAD_LEN <= self.bytes.len() {
            if let At::Record(r) = self.at(at)
                && seq_after.is_none_or(|s| r.seq > s)
            {
                return Some(r);
            }
            at += RECORD_ALIGN;
        }
        None
    }
}

/// What walking a segment meets, in order.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Record(Record<'a>),
    /// Bytes that are not an intact record, followed by an intact one (at `resumed_at`).
    Corrupt {
        offset: usize,
        why: &'static str,
        resumed_at: usize,
    },
    /// Bytes that are not an intact record, with none after them: what a crash mid-write
    /// leaves. The walk ends here.
    Torn {
        offset: usize,
        why: &'static str,
    },
}

impl<'a> Segment<'a> {
    /// Walks the records after the header: each intact one, and each bad stretch told as
    /// corruption (an intact record with a higher sequence number follows it) or a torn
    /// tail (none does). `seq_before`: the sequence number a record must be above.
    pub fn walk(&self, seq_before: Option<u64>, mut f: impl FnMut(Step<'a>)) {
        let mut at = HEADER_LEN;
        let mut last = seq_before;
        loop {
            match self.at(at) {
                At::Record(r) => {
                    last = Some(r.seq.max(last.unwrap_or(0)));
                    at = Segment::after(&r);
                    f(Step::Record(r));
                }
                At::End => return,
                At::Bad { offset, why } => match self.next_valid(offset, last) {
                    Some(r) => {
                        f(Step::Corrupt {
                            offset,
                            why,
                            resumed_at: r.offset,
                        });
                        at = r.offset;
                    }
                    None => return f(Step::Torn { offset, why }),
                },
            }
        }
    }
}

/// A decision record's body, read in place: its counts checked against its length once, so
/// no accessor reads past its end.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord<'a> {
    body: &'a [u8],
    fired: usize,
    shadow: usize,
    models: usize,
    velocity: usize,
}

/// Where a logged decision's event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventBytes<'a> {
    /// In the record itself: the event's rkyv bytes (at a 16-aligned file offset).
    InRecord(&'a [u8]),
    /// Event `index` of the batch in payload record `payload_seq`.
    InPayload { payload_seq: u64, index: u32 },
}

impl<'a> DecisionRecord<'a> {
    /// `None` if the counts do not fit the body (not written by verdict) or the action is
    /// not one of the three.
    pub fn parse(body: &'a [u8]) -> Option<DecisionRecord<'a>> {
        use decision as d;
        if body.len() < d::ARRAYS || body[d::ACTION] > 2 {
            return None;
        }
        let n = |at| u16_at(body, at) as usize;
        let r = DecisionRecord {
            body,
            fired: n(d::N_FIRED),
            shadow: n(d::N_SHADOW),
            models: n(d::N_MODELS),
            velocity: n(d::N_VELOCITY),
        };
        (body.len() >= r.arrays_end()).then_some(r)
    }

    fn arrays_end(&self) -> usize {
        decision::ARRAYS + 4 * (self.fired + self.shadow) + 9 * self.models + 8 * self.velocity
    }

    pub fn epoch(&self) -> u64 {
        u64_at(self.body, decision::EPOCH)
    }

    pub fn logged_at_ms(&self) -> u64 {
        u64_at(self.body, decision::LOGGED_AT_MS)
    }

    pub fn score(&self) -> i32 {
        u32_at(self.body, decision::SCORE) as i32
    }

    /// 0 allow, 1 review, 2 deny.
    pub fn action(&self) -> u8 {
        self.body[decision::ACTION]
    }

    pub fn shard(&self) -> u16 {
        u16_at(self.body, decision::SHARD)
    }

    fn indexes(&self, from: usize, n: usize) -> impl Iterator<Item = u32> + 'a {
        let body = self.body;
        (0..n).map(move |k| u32_at(body, decision::ARRAYS + 4 * (from + k)))
    }

    /// The rules that fired (indexes into the epoch's `rules`), in evaluation order.
    pub fn fired(&self) -> impl Iterator<Item = u32> + 'a {
        self.indexes(0, self.fired)
    }

    /// The shadow rules that fired.
    pub fn shadow(&self) -> impl Iterator<Item = u32> + 'a {
        self.indexes(self.fired, self.shadow)
    }

    pub fn models(&self) -> usize {
        self.models
    }

    /// Model `k`'s score and whether it failed (its score is then the fallback);
    /// `k < self.models()`.
    pub fn model(&self, k: usize) -> (f64, bool) {
        assert!(k < self.models, "model {k} of {}", self.models);
        let scores = decision::ARRAYS + 4 * (self.fired + self.shadow);
        (
            f64_at(self.body, scores + 8 * k),
            self.body[scores + 8 * self.models + k] != 0,
        )
    }

    /// The velocity values, in the epoch's `velocity` order.
    pub fn velocity(&self) -> impl Iterator<Item = f64> + 'a {
        let (body, at) = (
            self.body,
            decision::ARRAYS + 4 * (self.fired + self.shadow) + 9 * self.models,
        );
        (0..self.velocity).map(move |k| f64_at(body, at + 8 * k))
    }

    /// Where the event is; `None` if the record says its bytes follow but they do not fit.
    pub fn event(&self) -> Option<EventBytes<'a>> {
        use decision as d;
        match self.body[d::EVENT_KIND] {
            d::EVENT_IN_RECORD => {
                let len = u32_at(self.body, d::EVENT_LEN) as usize;
                // The body starts 8 bytes into a 16-aligned record.
                let start = (self.arrays_end() + RECORD_HEAD_LEN).next_multiple_of(RECORD_ALIGN)
                    - RECORD_HEAD_LEN;
                let bytes = self.body.get(start..start.checked_add(len)?)?;
                Some(EventBytes::InRecord(bytes))
            }
            d::EVENT_IN_PAYLOAD => Some(EventBytes::InPayload {
                payload_seq: u64_at(self.body, d::PAYLOAD_SEQ),
                index: u32_at(self.body, d::BATCH_INDEX),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, u8, &[u8])]) -> Vec<u8> {
        let header = SegmentHeader {
            shard: 1,
            shard_count: 2,
            partitions: 4096,
            first_seq: records.first().map_or(0, |r| r.0),
            created_ms: 5,
        };
        let mut out = header.encode().to_vec();
        for &(seq, kind, bytes) in records {
            let mut w = RecordWriter::begin(&mut out, seq, kind);
            w.put(bytes);
            w.finish();
        }
        out
    }

    #[test]
    fn headers_round_trip_and_reject_what_is_not_one() {
        let h = SegmentHeader {
            shard: 3,
            shard_count: 4,
            partitions: 8,
            first_seq: 1234,
            created_ms: 99,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        let mut flipped = bytes;
        flipped[30] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&flipped),
            Err(FormatError::HeaderChecksum)
        );
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(FormatError::Short(10))
        );
        assert_eq!(SegmentHeader::decode(&[0u8; 64]), Err(FormatError::Magic));
    }

    #[test]
    fn records_are_16_aligned_and_read_back() {
        let seg = segment(&[(7, KIND_DECISION, b"abc"), (8, KIND_PAYLOAD, &[9u8; 40])]);
        assert_eq!(seg.len() % RECORD_ALIGN, 0);
        let s = Segment { bytes: &seg };
        let At::Record(a) = s.at(HEADER_LEN) else {
            panic!()
        };
        assert_eq!(
            (a.seq, a.kind, &a.body[16..]),
            (7, KIND_DECISION, &b"abc"[..])
        );
        let At::Record(b) = s.at(Segment::after(&a)) else {
            panic!()
        };
        assert_eq!((b.seq, b.kind, b.body.len()), (8, KIND_PAYLOAD, 56));
        assert!(matches!(s.at(Segment::after(&b)), At::End));
    }

    /// Every truncation of a segment is a valid prefix plus, at most, a torn tail; a flipped
    /// byte in the middle is corruption with a valid record after it.
    #[test]
    fn torn_tails_and_corruption_are_told_apart() {
        let records: Vec<(u64, u8, Vec<u8>)> = (1..=5)
            .map(|i| (i, KIND_DECISION, vec![i as u8; 20 + i as usize]))
            .collect();
        let refs: Vec<(u64, u8, &[u8])> =
            records.iter().map(|(s, k, b)| (*s, *k, &b[..])).collect();
        let seg = segment(&refs);
        for cut in HEADER_LEN..seg.len() {
            let s = Segment { bytes: &seg[..cut] };
            s.walk(None, |step| {
                assert!(!matches!(step, Step::Corrupt { .. }), "cut at {cut}");
            });
        }
        let mut bad = seg.clone();
        bad[HEADER_LEN + 70] ^= 0x40;
        let s = Segment { bytes: &bad };
        let At::Record(first) = s.at(HEADER_LEN) else {
            panic!()
        };
        let second = Segment::after(&first);
        let At::Bad { offset, .. } = s.at(second) else {
            panic!("corrupt record read")
        };
        let next = s
            .next_valid(offset, Some(first.seq))
            .expect("a later record");
        assert_eq!(next.seq, 3);
    }
}
