//! One shard's log writer. Deciding appends records to the shard's buffer (no I/O, no
//! allocation once the buffers have grown); the shard's writer task takes the whole buffer
//! at `WRITE_BYTES_MIN`, every `WRITE_DELAY_MAX`, or at once when answers wait for it, and
//! writes it with O_DIRECT on io_uring (whole aligned blocks; the last, partial one is
//! rewritten by the next write, see `Segment`); it syncs as `log.sync` says, then tells the
//! batches waiting for those records. While it writes, new records gather in the
//! other buffer: the next write carries all of them (group commit).
//!
//! Where one segment ends and the next begins is decided as records are appended, not as
//! they are written: a batch that finds the segment at `segment_bytes_max` begins the next
//! one (its epoch record first), so every segment holds whole batches, names its own first
//! sequence number and says its epoch before any decision of it, however the writes fall.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::DmaFile;
use log::{info, warn};

use super::format::{self, RecordWriter, SegmentHeader};
use super::{LogConfig, OnWriteError, Sync};
use crate::decide::{Decided, Verdict};
use crate::mesh::Origin;
use crate::scoring::Published;

/// What the log did, for stats.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogStats {
    pub records: u64,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub fsync_ns_total: u64,
    pub fsync_ns_max: u64,
    /// Decisions answered without their record (buffer full, or a failed write, under
    /// `on_write_error = "answer"`).
    pub unlogged: u64,
    /// Decisions refused because their record could not be written (`"refuse"`).
    pub refused: u64,
    pub write_errors: u64,
    pub segments: u64,
}

/// Records the writer lets gather before it writes (unless answers wait for them), bytes.
const WRITE_BYTES_MIN: usize = 256 * 1024;
/// The longest a record waits in the buffer before it is written (unless answers wait
/// for it, which ring the writer at once).
const WRITE_DELAY_MAX: Duration = Duration::from_millis(2);

struct State {
    next_seq: u64,
    /// Records appended and not yet handed to the writer.
    pending: Vec<u8>,
    pending_records: u64,
    /// The last sequence number in `pending` (0: none).
    pending_last: u64,
    /// Every record up to this one is written (or failed), and up to `durable` synced.
    written: u64,
    durable: u64,
    /// Batches waiting for a record: (its sequence number, whether it must be synced, where
    /// to say whether it was written).
    waiters: Vec<(u64, bool, LocalSender<bool>)>,
    /// The epoch whose names the current segment has (0: none yet).
    epoch_logged: u64,
    /// Where in `pending` a new segment begins (in order).
    cuts: Vec<Cut>,
    /// The newest segment's size once `pending` is written: `segment_base` bytes, plus
    /// `pending[segment_from..]`.
    segment_base: u64,
    segment_from: usize,
    /// The payload record of the evaluate-batch being logged: (its address, its seq).
    payload: (usize, u64),
}

/// One shard's decision log.
pub struct Log {
    config: LogConfig,
    dir: PathBuf,
    header: SegmentHeader,
    state: RefCell<State>,
    doorbell: LocalSender<()>,
    closing: Cell<bool>,
    /// Told when the writer task has closed its segment (shutdown).
    closed: RefCell<Option<LocalReceiver<()>>>,
    pub stats: RefCell<LogStats>,
    /// Where the last sequence number written goes for the cluster thread (its decision
    /// stream's lag): `[shard]` of these, stored once per write.
    written_to: Option<crate::cluster::Appended>,
}

impl Log {
    /// Opens shard `header.shard`'s log in `config.dir`: recovers its last segment (a torn
    /// tail is cut) and starts a new segment at the next sequence number; spawns the writer
    /// task on this executor. `written_to[shard]`, if given, follows the last record written.
    pub async fn open(
        config: &LogConfig,
        mut header: SegmentHeader,
        written_to: Option<crate::cluster::Appended>,
    ) -> std::io::Result<Rc<Log>> {
        let dir = PathBuf::from(&config.dir);
        std::fs::create_dir_all(&dir)?;
        let recovered = super::recover::recover(&dir, u32::from(header.shard))?;
        for line in &recovered.report {
            warn!("decision log, shard {}: {line}", header.shard);
        }
        header.first_seq = recovered.next_seq;
        header.created_ms = now_ms();
        let file = create_segment(&dir, &header).await?;
        info!(
            "decision log, shard {}: {} (sync = {:?}), continuing at sequence {}",
            header.shard,
            dir.display(),
            config.sync,
            recovered.next_seq
        );
        let (doorbell, rung) = local_channel::new_bounded(1);
        let (closed_tx, closed_rx) = local_channel::new_bounded(1);
        let log = Rc::new(Log {
            config: config.clone(),
            dir,
            header,
            state: RefCell::new(State {
                next_seq: recovered.next_seq,
                pending: Vec::with_capacity(64 * 1024),
                pending_records: 0,
                pending_last: 0,
                written: recovered.next_seq.saturating_sub(1),
                durable: recovered.next_seq.saturating_sub(1),
                waiters: Vec::new(),
                epoch_logged: 0,
                payload: (0, 0),
                cuts: Vec::new(),
                segment_base: format::HEADER_LEN as u64,
                segment_from: 0,
            }),
            doorbell,
            closing: Cell::new(false),
            closed: RefCell::new(Some(closed_rx)),
            written_to,
            stats: RefCell::new(LogStats {
                segments: 1,
                ..LogStats::default()
            }),
        });
        log.tell_written(recovered.next_seq.saturating_sub(1));
        glommio::spawn_local(write_loop(log.clone(), file, rung, closed_tx)).detach();
        Ok(log)
    }

    /// Whether a decision whose record cannot be written is refused.
    pub fn refuses(&self) -> bool {
        self.config.on_write_error == OnWriteError::Refuse
    }

    /// Whether answers must wait for their records (`sync = "always"` waits for the fsync,
    /// `on_write_error = "refuse"` for the write).
    pub fn answers_wait(&self) -> bool {
        self.config.sync == Sync::Always || self.config.on_write_error == OnWriteError::Refuse
    }

    /// Appends the records of a batch's decisions: the epoch's names if this segment does
    /// not have them yet, an evaluate-batch's payload once, then one record per decision.
    /// `velocity` holds each verdict's velocity values. Returns, per verdict, its record's
    /// sequence number, or `None` if it has none (the buffer is full).
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        published: &Published,
        shard: u32,
        origins: &[Origin<'_>],
        decided: &Decided,
        velocity: &crate::decide::Scratch,
        seqs: &mut Vec<Option<u64>>,
    ) {
        let mut st = self.state.borrow_mut();
        let max = self.config.buffer_bytes_max as usize;
        let epoch = published.rules.epoch;
        // A batch never straddles two segments: one that finds the segment full begins
        // the next.
        if st.segment_base + (st.pending.len() - st.segment_from) as u64
            >= self.config.segment_bytes_max
        {
            let cut = Cut {
                at: st.pending.len(),
                records: st.pending_records,
                last: st.next_seq - 1,
            };
            st.cuts.push(cut);
            st.segment_base = format::HEADER_LEN as u64;
            st.segment_from = cut.at;
            st.epoch_logged = 0;
        }
        if st.epoch_logged != epoch && st.pending.len() < max {
            let seq = st.take_seq();
            let names = epoch_json(published);
            let mut w = RecordWriter::begin(&mut st.pending, seq, format::KIND_EPOCH);
            w.put(names.as_bytes());
            w.finish();
            st.note(seq);
            st.epoch_logged = epoch;
        }
        let logged_at = now_ms();
        seqs.clear();
        let mut unlogged = 0;
        for (verdict, origin) in decided.verdicts.iter().zip(origins) {
            if st.pending.len() >= max || st.epoch_logged != epoch {
                seqs.push(None);
                unlogged += 1;
                continue;
            }
            let event = match *origin {
                Origin::Frame(bytes) => EventAt::Bytes(bytes),
                Origin::Batch(payload, index) => {
                    if st.payload.0 != payload.as_ptr() as usize {
                        let seq = st.take_seq();
                        let mut w = RecordWriter::begin(&mut st.pending, seq, format::KIND_PAYLOAD);
                        w.align();
                        w.put(payload);
                        w.finish();
                        st.note(seq);
                        st.payload = (payload.as_ptr() as usize, seq);
                    }
                    EventAt::Payload(st.payload.1, index)
                }
            };
            let seq = st.take_seq();
            let v = seqs.len();
            decision_record(
                &mut st.pending,
                seq,
                epoch,
                logged_at,
                shard,
                verdict,
                decided,
                velocity.velocity(v),
                event,
            );
            st.note(seq);
            seqs.push(Some(seq));
        }
        st.payload = (0, 0);
        drop(st);
        let mut stats = self.stats.borrow_mut();
        stats.records += seqs.iter().flatten().count() as u64;
        match self.config.on_write_error {
            OnWriteError::Answer => stats.unlogged += unlogged,
            OnWriteError::Refuse => stats.refused += unlogged,
        }
        drop(stats);
        // Answers that wait for their records want them written now; otherwise the
        // writer takes a full buffer, or what is there every `WRITE_DELAY_MAX`: fewer,
        // larger writes.
        if self.answers_wait() || self.state.borrow().pending.len() >= WRITE_BYTES_MIN {
            let _ = self.doorbell.try_send(());
        }
    }

    /// Waits until record `seq` is on disk (written and synced: a written record is on its
    /// way to the device, not yet known to be there); whether it got there.
    pub async fn wait(&self, seq: u64) -> bool {
        let durable = true;
        let rx = {
            let mut st = self.state.borrow_mut();
            let done = if durable { st.durable } else { st.written };
            if seq <= done {
                return true;
            }
            let (tx, rx) = local_channel::new_bounded(1);
            st.waiters.push((seq, durable, tx));
            rx
        };
        let _ = self.doorbell.try_send(());
        rx.recv().await.unwrap_or(false)
    }

    /// Writes and syncs what is left and closes the segment (shutdown). Bounded by
    /// `limits.shutdown_drain_ms` by the caller.
    pub async fn close(&self) {
        self.closing.set(true);
        let _ = self.doorbell.try_send(());
        let closed = self.closed.borrow_mut().take();
        if let Some(closed) = closed {
            let _ = closed.recv().await;
        }
    }

    fn count_failed(&self, n: u64) {
        let mut s = self.stats.borrow_mut();
        s.write_errors += 1;
        match self.config.on_write_error {
            OnWriteError::Answer => s.unlogged += n,
            OnWriteError::Refuse => s.refused += n,
        }
        s.records -= n.min(s.records);
    }
}

impl Log {
    /// Tells the cluster thread (if it follows this log) that records up to `seq` are written.
    fn tell_written(&self, seq: u64) {
        if let Some(w) = self
            .written_to
            .as_ref()
            .and_then(|w| w.get(usize::from(self.header.shard)))
        {
            w.store(seq, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl State {
    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn note(&mut self, seq: u64) {
        self.pending_last = seq;
        self.pending_records += 1;
    }

    /// Tells the waiters whose records are now written (or synced), or lost (`lost`: the
    /// ranges that failed).
    fn resolve(&mut self, lost: &[(u64, u64)]) {
        let (written, durable) = (self.written, self.durable);
        self.waiters.retain(|(seq, need_durable, tx)| {
            if lost.iter().any(|&(from, to)| (from..=to).contains(&*seq)) {
                let _ = tx.try_send(false);
                return false;
            }
            let done = if *need_durable { durable } else { written };
            if *seq <= done {
                let _ = tx.try_send(true);
                return false;
            }
            true
        });
    }
}

/// A segment boundary in the pending records: the next segment begins at byte `at`; the
/// records before it number `records` (counted from the start of `pending`) and end with
/// sequence number `last`.
#[derive(Clone, Copy)]
struct Cut {
    at: usize,
    records: u64,
    last: u64,
}

enum EventAt<'a> {
    Bytes(&'a [u8]),
    Payload(u64, u32),
}

#[allow(clippy::too_many_arguments)]
fn decision_record(
    out: &mut Vec<u8>,
    seq: u64,
    epoch: u64,
    logged_at_ms: u64,
    shard: u32,
    v: &Verdict,
    decided: &Decided,
    velocity: &[f64],
    event: EventAt<'_>,
) {
    use format::decision as d;
    let mut w = RecordWriter::begin(out, seq, format::KIND_DECISION);
    let fired = &decided.rules[v.fired.clone()];
    let shadow = &decided.rules[v.shadow.clone()];
    let scores = &decided.scores[v.models.clone()];
    let mut head = [0u8; d::ARRAYS - format::BODY_HEAD_LEN];
    let mut put = |at: usize, bytes: &[u8]| {
        let at = at - format::BODY_HEAD_LEN;
        head[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(d::EPOCH, &epoch.to_le_bytes());
    put(d::LOGGED_AT_MS, &logged_at_ms.to_le_bytes());
    put(d::SCORE, &v.score.to_le_bytes());
    put(d::ACTION, &[v.action as u8]);
    put(d::N_FIRED, &(fired.len() as u16).to_le_bytes());
    put(d::N_SHADOW, &(shadow.len() as u16).to_le_bytes());
    put(d::N_MODELS, &(scores.len() as u16).to_le_bytes());
    put(d::N_VELOCITY, &(velocity.len() as u16).to_le_bytes());
    put(d::SHARD, &(shard as u16).to_le_bytes());
    match event {
        EventAt::Bytes(bytes) => {
            put(d::EVENT_KIND, &[d::EVENT_IN_RECORD]);
            put(d::EVENT_LEN, &(bytes.len() as u32).to_le_bytes());
        }
        EventAt::Payload(payload_seq, index) => {
            put(d::EVENT_KIND, &[d::EVENT_IN_PAYLOAD]);
            put(d::PAYLOAD_SEQ, &payload_seq.to_le_bytes());
            put(d::BATCH_INDEX, &index.to_le_bytes());
        }
    }
    w.put(&head);
    for r in fired.iter().chain(shadow) {
        w.put(&r.to_le_bytes());
    }
    for (score, _) in scores {
        w.put(&score.to_le_bytes());
    }
    for (_, failed) in scores {
        w.put(&[u8::from(*failed)]);
    }
    for x in velocity {
        w.put(&x.to_le_bytes());
    }
    if let EventAt::Bytes(bytes) = event {
        w.align();
        w.put(bytes);
    }
    w.finish();
}

/// The names an epoch's decisions refer to by index, as JSON.
fn epoch_json(published: &Published) -> String {
    let rules = &published.rules;
    let names: Vec<&str> = (0..rules.shape().rules as u32)
        .map(|i| rules.rule_name(i))
        .collect();
    let velocity = published.velocity_ids();
    serde_json::json!({
        "epoch": rules.epoch,
        "digest": rules.digest,
        "files": rules.files,
        "rules": names,
        "models": rules.models(),
        "model_versions": published.used.iter().map(|m| m.describe()).collect::<Vec<_>>(),
        "velocity": velocity,
    })
    .to_string()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A segment file written with O_DIRECT: every write covers whole aligned blocks, from the
/// block holding the end of what is written so far (kept in `tail`, rewritten with the new
/// bytes) to the new end, padded with zeros. A failed write changes nothing: the next one
/// starts from the same block. (glommio's `DmaStreamWriter` does the same job but asserts,
/// panicking the core, on a sync after a failed write: a full disk must not do that.)
struct Segment {
    file: DmaFile,
    /// Bytes of the segment so far (its logical size).
    len: u64,
    /// The bytes of the last, partial block (`len` minus its aligned start).
    tail: Vec<u8>,
    align: u64,
}

impl Segment {
    async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        let start = self.len - self.tail.len() as u64;
        let total = self.tail.len() + data.len();
        let padded = (total as u64).next_multiple_of(self.align) as usize;
        let mut buf = self.file.alloc_dma_buffer(padded);
        let bytes = buf.as_bytes_mut();
        bytes[..self.tail.len()].copy_from_slice(&self.tail);
        bytes[self.tail.len()..total].copy_from_slice(data);
        bytes[total..padded].fill(0);
        let n = self.file.write_at(buf, start).await?;
        if n < padded {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("short write: {n} of {padded} bytes"),
            ));
        }
        self.len += data.len() as u64;
        let keep = (self.len % self.align) as usize;
        if keep <= data.len() {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let cut = self.tail.len() - keep;
            self.tail.drain(..cut);
        }
        Ok(())
    }

    async fn sync(&self) -> std::io::Result<()> {
        self.file.fdatasync().await.map_err(Into::into)
    }

    /// Cuts the last block's padding and closes.
    async fn close(self) -> std::io::Result<()> {
        self.file.truncate(self.len).await?;
        self.file.fdatasync().await?;
        self.file.close().await.map_err(Into::into)
    }
}

/// A new segment, its header on disk before any record is (a segment that exists has one).
async fn create_segment(dir: &std::path::Path, header: &SegmentHeader) -> std::io::Result<Segment> {
    let path = dir.join(super::segment_name(
        u32::from(header.shard),
        header.first_seq,
    ));
    let file = DmaFile::create(&path).await?;
    let align = file.alignment().max(4096);
    let mut segment = Segment {
        file,
        len: 0,
        tail: Vec::with_capacity(align as usize),
        align,
    };
    segment.append(&header.encode()).await?;
    segment.sync().await?;
    Ok(segment)
}

/// The writer task: writes what is pending each time it is rung (and at least every
/// `sync_interval_ms`), begins a new segment where the records say so, syncs, and tells
/// the waiters.
async fn write_loop(
    log: Rc<Log>,
    mut file: Segment,
    rung: LocalReceiver<()>,
    closed: LocalSender<()>,
) {
    let interval = Duration::from_millis(log.config.sync_interval_ms.max(1));
    let wake = interval.min(WRITE_DELAY_MAX);
    let mut spare: Vec<u8> = Vec::with_capacity(WRITE_BYTES_MIN);
    let mut spare_cuts: Vec<Cut> = Vec::new();
    // Sequence ranges whose records did not get to disk.
    let mut lost: Vec<(u64, u64)> = Vec::new();
    // The last epoch record of a failed write, written again ahead of the next part: the
    // records appended while that write failed may be of its epoch, and the segment must
    // name an epoch before its decisions (its sequence number stays below theirs).
    let mut carry: Vec<u8> = Vec::new();
    let mut last_sync = Instant::now();
    loop {
        let _ = glommio::timer::timeout(wake, async { Ok(rung.recv().await) }).await;
        let (buf, cuts, records, last) = {
            let mut st = log.state.borrow_mut();
            let st = &mut *st;
            st.segment_base += (st.pending.len() - st.segment_from) as u64;
            st.segment_from = 0;
            std::mem::swap(&mut st.pending, &mut spare);
            std::mem::swap(&mut st.cuts, &mut spare_cuts);
            (
                std::mem::take(&mut spare),
                std::mem::take(&mut spare_cuts),
                std::mem::take(&mut st.pending_records),
                std::mem::take(&mut st.pending_last),
            )
        };
        lost.clear();
        // The parts of `buf` between cuts, each in its own segment.
        let (mut from, mut records_before) = (0, 0);
        let ends = cuts.iter().map(Some).chain(std::iter::once(None));
        for cut in ends {
            let (to, records_to, last_to) = match cut {
                Some(c) => (c.at, c.records, c.last),
                None => (buf.len(), records, last),
            };
            if to > from {
                let part = Part {
                    bytes: &buf[from..to],
                    records: records_to - records_before,
                    last: last_to,
                };
                write_part(&log, &mut file, part, &mut carry, &mut lost).await;
            }
            (from, records_before) = (to, records_to);
            if let Some(c) = cut {
                match rotate(&log, c.last + 1).await {
                    Ok(next) => {
                        // The new segment starts with its own epoch record.
                        carry.clear();
                        // Closing syncs: what the old segment holds is on disk, or, if
                        // that failed, may not be.
                        let closed = std::mem::replace(&mut file, next).close().await;
                        let mut st = log.state.borrow_mut();
                        if let Err(e) = closed
                            && st.written > st.durable
                        {
                            warn!(
                                "decision log, shard {}: closing a segment failed: {e}",
                                log.header.shard
                            );
                            lost.push((st.durable + 1, st.written));
                            log.count_failed(st.written - st.durable);
                        }
                        st.durable = st.written;
                    }
                    Err(e) => warn!(
                        "decision log, shard {}: starting a new segment failed: {e}; appending to the current one",
                        log.header.shard
                    ),
                }
            }
        }
        let (written, durable) = {
            let st = log.state.borrow();
            (st.written, st.durable)
        };
        // A written record is on its way to the device, not yet known to be there: whoever
        // waits for a record waits for a sync.
        let waited_for = !log.state.borrow().waiters.is_empty();
        let sync_now = written > durable
            && (waited_for
                || log.closing.get()
                || match log.config.sync {
                    Sync::Always => true,
                    Sync::Interval => last_sync.elapsed() >= interval,
                    Sync::Off => false,
                });
        if sync_now {
            let began = Instant::now();
            match file.sync().await {
                Ok(_) => {
                    let ns = began.elapsed().as_nanos() as u64;
                    let mut s = log.stats.borrow_mut();
                    s.fsyncs += 1;
                    s.fsync_ns_total += ns;
                    s.fsync_ns_max = s.fsync_ns_max.max(ns);
                    log.state.borrow_mut().durable = written;
                }
                Err(e) => {
                    // What was written since the last good sync may not be on disk: its
                    // waiters are told so (never left waiting), and it counts as lost.
                    warn!("decision log, shard {}: sync failed: {e}", log.header.shard);
                    let mut st = log.state.borrow_mut();
                    lost.push((st.durable + 1, written));
                    log.count_failed(written - st.durable);
                    st.durable = written;
                }
            }
            last_sync = Instant::now();
        }
        log.state.borrow_mut().resolve(&lost);
        spare = buf;
        spare.clear();
        spare_cuts = cuts;
        spare_cuts.clear();
        if log.closing.get() && log.state.borrow().pending.is_empty() {
            break;
        }
    }
    // Close syncs and cuts the last DMA block's padding; anyone still waiting is told.
    let ok = file.close().await.is_ok();
    let mut st = log.state.borrow_mut();
    if ok {
        st.durable = st.written;
    }
    st.resolve(&[]);
    for (_, _, tx) in st.waiters.drain(..) {
        let _ = tx.try_send(false);
    }
    drop(st);
    let _ = closed.try_send(());
}

/// Pending records bound for one segment: `records` of them, the last numbered `last`.
struct Part<'a> {
    bytes: &'a [u8],
    records: u64,
    last: u64,
}

/// Writes `part` to `file`, after `carry` (an epoch record a failed write lost); a failed
/// write counts its records lost and leaves its last epoch record in `carry`.
async fn write_part(
    log: &Log,
    file: &mut Segment,
    part: Part<'_>,
    carry: &mut Vec<u8>,
    lost: &mut Vec<(u64, u64)>,
) {
    let joined;
    let bytes = if carry.is_empty() {
        part.bytes
    } else {
        joined = [carry.as_slice(), part.bytes].concat();
        &joined[..]
    };
    let len = bytes.len() as u64;
    match file.append(bytes).await {
        Ok(()) => {
            carry.clear();
            log.stats.borrow_mut().bytes_written += len;
            log.state.borrow_mut().written = part.last;
            log.tell_written(part.last);
        }
        Err(e) => {
            let (decisions, epoch) = lost_records(bytes);
            warn!(
                "decision log, shard {}: writing {len} bytes failed: {e}; {} records lost, {decisions} of them decisions",
                log.header.shard, part.records
            );
            log.count_failed(decisions);
            *carry = epoch.to_vec();
            let mut st = log.state.borrow_mut();
            lost.push((st.written + 1, part.last));
            st.written = part.last;
        }
    }
}

/// Of whole records `bytes` that a write lost: how many are decisions, and the last epoch
/// record (empty if there is none).
fn lost_records(bytes: &[u8]) -> (u64, &[u8]) {
    let records = format::Segment { bytes };
    let (mut at, mut decisions, mut epoch) = (0, 0, &bytes[..0]);
    while let format::At::Record(r) = records.at(at) {
        let next = format::Segment::after(&r);
        match r.kind {
            format::KIND_EPOCH => epoch = &bytes[at..next.min(bytes.len())],
            format::KIND_DECISION => decisions += 1,
            _ => {}
        }
        at = next;
    }
    (decisions, epoch)
}

/// Starts shard's next segment, its first record `first_seq`, then applies retention to
/// the closed ones.
async fn rotate(log: &Log, first_seq: u64) -> std::io::Result<Segment> {
    let mut header = log.header;
    header.first_seq = first_seq;
    header.created_ms = now_ms();
    let next = match create_segment(&log.dir, &header).await {
        Ok(next) => next,
        Err(e) => {
            // A file that did not get its header whole is no segment: a restart must not
            // take it for the last one.
            let path = log
                .dir
                .join(super::segment_name(u32::from(header.shard), first_seq));
            if std::fs::metadata(&path).is_ok_and(|m| m.len() <= format::HEADER_LEN as u64) {
                let _ = std::fs::remove_file(&path);
            }
            return Err(e);
        }
    };
    log.stats.borrow_mut().segments += 1;
    retain(log, &header);
    Ok(next)
}

/// Deletes this shard's oldest closed segments past `retention_bytes_max` or older than
/// `retention_hours_max` (the current one, `current`, always stays).
fn retain(log: &Log, current: &SegmentHeader) {
    let (bytes_max, hours_max) = (
        log.config.retention_bytes_max,
        log.config.retention_hours_max,
    );
    if bytes_max == 0 && hours_max == 0 {
        return;
    }
    let Ok(segments) = super::segments(&log.dir, Some(u32::from(current.shard))) else {
        return;
    };
    let sized: Vec<(PathBuf, u64, Option<std::time::SystemTime>)> = segments
        .into_iter()
        .filter(|(_, seq, _)| *seq != current.first_seq)
        .filter_map(|(_, _, p)| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.len(), m.modified().ok()))
        })
        .collect();
    let mut total: u64 = sized.iter().map(|s| s.1).sum();
    for (path, len, modified) in sized {
        let too_big = bytes_max > 0 && total > bytes_max;
        let too_old = hours_max > 0
            && modified
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(hours_max * 3600));
        if !(too_big || too_old) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= len;
                info!("decision log: retention removed {}", path.display());
            }
            Err(e) => warn!("decision log: removing {}: {e}", path.display()),
        }
    }
}
