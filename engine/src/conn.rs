//! One client connection: read -> frames -> validated archives -> decisions -> response
//! frames -> write. Requests on a connection are answered in order, each exactly once.
//!
//! A *batch* is every whole frame one read delivered (at most `pipeline_depth_max`): they are
//! decoded in place from the 16-aligned receive buffer (no copy), answered into the
//! connection's write buffer, and the write buffer goes out in one `write_all`. While it is
//! being written the connection reads nothing more, so a slow reader meets TCP backpressure
//! instead of growing server memory.
//!
//! Every batch is decided by the shard's current rule set: the shard checks the rule epoch
//! once at the start of each batch (one atomic load) and swaps sets only there.
//!
//! Heap allocation per request on this path: none for ping, evaluate and topology once the
//! buffers have warmed up (the encoder's arena, the buffers, the outcome and the name and
//! view vectors are reused). Stats and reload requests allocate (they cross threads), and
//! so do error messages built for malformed payloads.

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::decide::{Decided, Scratch, decide, recycle};
use crate::drain::Waiter;
use crate::mesh::MeshError;
use crate::reload::SubmitError;
use crate::shard::{ConnectionSlot, Shard, ShardEvent};
use crate::transport::Transport;
use futures_lite::{AsyncReadExt, future};
use glommio::net::TcpStream;
use rkyv::{rancor, util::AlignedVec};
use verdict_net::frame::{FRAME_ALIGN, FrameAt, RecvBuffer, Scan};
use verdict_net::validate::validate_event;
use verdict_net::{
    ArchivedEvaluateBatch, ArchivedEvent, ArchivedReloadRequest, DecisionBatchView, DecisionView,
    ErrorCode, ErrorReplyView, FrameEncoder, Kind, SliceView, StrView,
};

/// Whether the connection goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// A connection's buffers and scratch, reused for its whole life (the response buffer
/// only while answers wait to be written: it comes from the shard's pool).
struct Connection {
    recv: RecvBuffer,
    /// Empty and unallocated between batches; taken from `Shard::buffers` for one.
    out: AlignedVec<FRAME_ALIGN>,
    encoder: FrameEncoder,
    /// Error messages are formatted here.
    message: String,
    /// Capacity for evaluate-batch decision views, kept between requests.
    views: Vec<DecisionView<'static>>,
    /// Capacity for a batch's verdicts and the names and scores they report (borrowed from
    /// the epoch per batch).
    decided: Decided<'static>,
    /// Scratch for a batch's evaluation.
    scratch: Scratch,
    /// The frames of a run of evaluates, and their events (borrowed per run).
    run: Vec<FrameAt>,
    run_events: Vec<&'static ArchivedEvent>,
    /// Clock reading when the last read completed: when the frames it finished arrived.
    read_at: u64,
    /// When the first byte of the incomplete frame at the front arrived (None: the buffer
    /// holds no partial frame). It must be whole within `limits.frame_timeout_ms`.
    partial_since: Option<Instant>,
}

/// Serves one connection until the peer closes, a framing error, an I/O error or timeout,
/// a frame that does not arrive whole in time, or the end of the shutdown drain. `slot`
/// holds the connection's place under `connections_per_shard_max` and its share of the
/// shard's connection memory until this returns.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, slot: ConnectionSlot) {
    let limits = &shard.limits;
    let _ = stream.set_nodelay(true);
    let idle = (limits.idle_timeout_ms > 0).then(|| Duration::from_millis(limits.idle_timeout_ms));
    let _ = stream.set_read_timeout(idle);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(limits.write_timeout_ms)));
    let frame_timeout = Duration::from_millis(limits.frame_timeout_ms);
    // Under TLS the handshake comes first, bounded like a frame; a peer that does not speak
    // TLS (or lacks a required client certificate) gets rustls' alert and the close.
    let tls = shard.rules.borrow().tls.clone();
    let mut stream = match Transport::accept(stream, tls, Instant::now() + frame_timeout).await {
        Ok(transport) => transport,
        Err((_, socket)) => {
            shard.stats.borrow_mut().tls_handshakes_failed += 1;
            if let Some(socket) = socket {
                linger_close(&shard, Transport::Plain(socket)).await;
            }
            return;
        }
    };
    let waiter = shard.drain.waiter();
    let mut conn = Connection {
        recv: RecvBuffer::new(limits.read_buffer_bytes as usize),
        out: AlignedVec::new(),
        encoder: FrameEncoder::new(),
        message: String::with_capacity(256),
        views: Vec::new(),
        decided: Decided::default(),
        scratch: Scratch::default(),
        run: Vec::new(),
        run_events: Vec::new(),
        read_at: 0,
        partial_since: None,
    };
    loop {
        if !matches!(
            conn.recv.front(limits.frame_len_max_bytes),
            Scan::Frame(_) | Scan::Broken { .. }
        ) {
            // Room for a large frame's bytes comes out of the shard's connection memory.
            let len = conn.recv.len_for_read(limits.frame_len_max_bytes);
            if !slot.hold_grown((len - conn.recv.base_len()) as u64) {
                refuse_room(&shard, &mut conn, &mut stream, len).await;
                break;
            }
            let deadline = conn.partial_since.map(|since| since + frame_timeout);
            let read = match read_some(&shard, &waiter, &mut stream, &mut conn.recv, deadline).await
            {
                ReadOutcome::Bytes(n) => n,
                ReadOutcome::Draining => continue,
                ReadOutcome::Done => break,
            };
            conn.read_at = shard.clock.raw();
            conn.partial_since.get_or_insert_with(Instant::now);
            shard.stats.borrow_mut().bytes_in += read as u64;
        }
        // A batch's answers may grow past the response buffer's base into what the memory
        // budget has free: reserve that first, so the connections answered while this one's
        // answers wait to be written see it taken.
        let recv_grown = (conn.recv.len() - conn.recv.base_len()) as u64;
        let mut out_cap = shard
            .buffers
            .out_cap(limits.write_buffer_bytes_max as usize);
        let out_extra = out_cap.saturating_sub(limits.write_buffer_bytes as usize) as u64;
        if !slot.hold_grown(recv_grown + out_extra) {
            out_cap = limits.write_buffer_bytes as usize;
        }
        conn.out = shard.buffers.take_out();
        let (flow, consumed) = conn.answer_batch(&shard, out_cap).await;
        // A partial frame left after whole ones began arriving with the last read.
        if conn.recv.buffered() == 0 {
            conn.partial_since = None;
        } else if consumed {
            conn.partial_since = Some(Instant::now());
        }
        if !conn.out.is_empty() {
            // Let every other connection that is ready decide its batch before this one
            // sends: the shard's sends then leave back to back, and a client woken by the
            // first finds the rest already there, instead of being woken once per response
            // (on loopback each wake-up of a sleeping client costs the sender an IPI). One
            // trip through the run queue; measured in the README's Performance section.
            futures_lite::future::yield_now().await;
            if stream.write_all(&conn.out).await.is_err() {
                break;
            }
            shard.stats.borrow_mut().bytes_out += conn.out.len() as u64;
        }
        shard.buffers.give_back_out(std::mem::take(&mut conn.out));
        // Written: the answers' reservation goes back; what the receive buffer holds stays.
        slot.hold_grown((conn.recv.len() - conn.recv.base_len()) as u64);
        if flow == Flow::Close {
            break;
        }
    }
    drop(slot);
    linger_close(&shard, stream).await;
}

/// No room in the shard's connection memory for the frame arriving: error 8, then close
/// (its bytes cannot be skipped without reading them).
async fn refuse_room(shard: &Shard, conn: &mut Connection, stream: &mut Transport, len: usize) {
    let id = match conn.recv.front(shard.limits.frame_len_max_bytes) {
        Scan::Incomplete { .. } => conn.recv.front_id().unwrap_or(0),
        _ => 0,
    };
    conn.message.clear();
    let _ = write!(
        conn.message,
        "no room for a {len}-byte receive buffer: shard {} has {} of {} bytes of connection memory in use (limits.connection_memory_bytes_max); closing the connection",
        shard.index,
        shard.buffers.in_use_bytes(),
        shard.buffers.budget_bytes()
    );
    conn.out = shard.buffers.take_out();
    conn.push_error(shard, id, ErrorCode::Overloaded);
    shard.stats.borrow_mut().requests += 1;
    if stream.write_all(&conn.out).await.is_ok() {
        shard.stats.borrow_mut().bytes_out += conn.out.len() as u64;
    }
    shard.buffers.give_back_out(std::mem::take(&mut conn.out));
}

enum ReadOutcome {
    Bytes(usize),
    /// Shutdown began while waiting: read again, now under the drain's quiet timeout.
    Draining,
    /// EOF, error or timeout: the connection is finished.
    Done,
}

/// Reads what the peer sent; `deadline`: when the partial frame in `recv` must be whole
/// (the read ends the connection at it).
async fn read_some(
    shard: &Shard,
    waiter: &Waiter,
    stream: &mut Transport,
    recv: &mut RecvBuffer,
    deadline: Option<Instant>,
) -> ReadOutcome {
    let space = recv.read_space(shard.limits.frame_len_max_bytes);
    let result = if let Some(deadline) = deadline {
        // A frame is arriving: it has until its deadline, draining or not (the drain's
        // quiet time is the shorter bound while draining).
        let mut left = deadline.saturating_duration_since(Instant::now());
        if shard.drain.is_draining() {
            left = left.min(Duration::from_millis(shard.limits.shutdown_quiet_ms));
        }
        match glommio::timer::timeout(left, async { Ok(stream.read(space).await) }).await {
            Ok(r) => Some(r),
            Err(_) => return ReadOutcome::Done,
        }
    } else if shard.drain.is_draining() {
        // The socket's own read timer may still run on the idle timeout; bound this read by
        // the quiet time explicitly.
        let quiet = Duration::from_millis(shard.limits.shutdown_quiet_ms);
        match glommio::timer::timeout(quiet, async { Ok(stream.read(space).await) }).await {
            Ok(r) => Some(r),
            Err(_) => return ReadOutcome::Done,
        }
    } else {
        // glommio's reads are readiness-based (poll, then recv), so dropping this read when
        // shutdown wins the race loses no bytes.
        future::or(async { Some(stream.read(space).await) }, async {
            waiter.drained().await;
            None
        })
        .await
    };
    match result {
        None => ReadOutcome::Draining,
        Some(Ok(0)) | Some(Err(_)) => ReadOutcome::Done,
        Some(Ok(n)) => {
            recv.filled(n);
            ReadOutcome::Bytes(n)
        }
    }
}

/// Most bytes read and thrown away while closing, so the peer sees our last frames.
const LINGER_DISCARD_BYTES_MAX: usize = 256 * 1024;

/// Closes so that what we wrote arrives: shut down our sending side, then read and discard
/// whatever the peer still sends (bounded in bytes and by `shutdown_quiet_ms`), because
/// closing a socket with unread input makes the kernel reset the connection and drop our
/// unacknowledged responses, the error frame that explains the close among them.
async fn linger_close(shard: &Shard, mut stream: Transport) {
    stream.shutdown_write().await;
    let quiet = Duration::from_millis(shard.limits.shutdown_quiet_ms);
    // What is left is discarded unread, ciphertext or not: read the socket itself.
    let mut socket = match stream {
        Transport::Plain(s) => s,
        Transport::Tls(t) => t.into_tcp(),
    };
    let _ = glommio::timer::timeout(quiet, async {
        let mut scratch = [0u8; 4096];
        let mut discarded = 0;
        while discarded < LINGER_DISCARD_BYTES_MAX {
            match socket.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
        Ok(())
    })
    .await;
}

impl Connection {
    /// Answers the whole frames at the front of the receive buffer, up to
    /// `pipeline_depth_max` or until the answers reach `out_cap` bytes; whether any was
    /// answered.
    async fn answer_batch(&mut self, shard: &Shard, out_cap: usize) -> (Flow, bool) {
        let limits = &shard.limits;
        let mut handled = 0u64;
        let mut flow = Flow::Continue;
        let started = shard.clock.raw();
        shard.refresh_rules();
        while handled < u64::from(limits.pipeline_depth_max) && self.out.len() < out_cap {
            let at = match self.recv.front(limits.frame_len_max_bytes) {
                Scan::Incomplete { .. } => break,
                Scan::Broken { id, error } => {
                    // Framing is lost: answer this one error, then close.
                    self.message.clear();
                    let _ = write!(self.message, "{error}; closing the connection");
                    self.push_error(shard, id, ErrorCode::from(error));
                    shard.stats.borrow_mut().requests += 1;
                    flow = Flow::Close;
                    break;
                }
                Scan::Frame(at) => at,
            };
            // A run of evaluate frames is decided as one batch (one model call for all).
            let (frames, bytes) = if at.header.kind == Kind::Evaluate.request_byte() {
                let max = (u64::from(limits.pipeline_depth_max) - handled) as usize;
                match self.evaluate_run(shard, &at, max) {
                    Ok((frames, bytes)) => {
                        shard.stats.borrow_mut().responses += frames;
                        (frames, bytes)
                    }
                    Err(code) => {
                        self.push_error(shard, at.header.id, code);
                        (1, at.frame_len)
                    }
                }
            } else {
                self.answer(shard, &at).await;
                (1, at.frame_len)
            };
            handled += frames;
            self.recv.consume(bytes);
            let done = shard.clock.raw();
            let latency = shard.clock.delta_as_nanos(self.read_at, done);
            let mut s = shard.stats.borrow_mut();
            s.requests += frames;
            for _ in 0..frames {
                s.record_latency_ns(latency);
            }
        }
        // Instances lost to a failing model this batch are replaced now, not on an event's
        // path.
        shard.models.borrow_mut().refill();
        let took = shard.clock.delta_as_nanos(started, shard.clock.raw());
        let mut s = shard.stats.borrow_mut();
        s.record_batch_requests(handled);
        if handled > 0 {
            s.record_batch_ns(took);
        }
        (flow, handled > 0)
    }

    /// Answers one frame; every path appends exactly one response frame.
    async fn answer(&mut self, shard: &Shard, at: &FrameAt) {
        let id = at.header.id;
        let Some(kind) = Kind::from_request_byte(at.header.kind) else {
            self.message.clear();
            let _ = write!(self.message, "unknown request kind {:#04x}", at.header.kind);
            return self.push_error(shard, id, ErrorCode::UnknownKind);
        };
        if kind.payload_is_empty() && at.header.len != 0 {
            self.message.clear();
            let _ = write!(
                self.message,
                "a {kind:?} request carries no payload, got {} bytes",
                at.header.len
            );
            return self.push_error(shard, id, ErrorCode::InvalidPayload);
        }
        let result = match kind {
            Kind::Ping => {
                self.encoder
                    .push_empty(&mut self.out, kind.response_byte(), id);
                Ok(())
            }
            Kind::Evaluate => self.evaluate(shard, at),
            Kind::EvaluateBatch => self.evaluate_batch(shard, at),
            Kind::Topology => self
                .encoder
                .push(&mut self.out, kind.response_byte(), id, &shard.topology)
                .map_err(|_| self.internal("topology reply")),
            Kind::Stats => self.stats(shard, id).await,
            Kind::Reload => self.reload(shard, at).await,
        };
        match result {
            Ok(()) => shard.stats.borrow_mut().responses += 1,
            Err(code) => self.push_error(shard, id, code),
        }
    }

    fn internal(&mut self, what: &str) -> ErrorCode {
        self.message.clear();
        let _ = write!(self.message, "could not encode the {what}");
        ErrorCode::Internal
    }

    /// Appends an error frame whose message is `self.message`.
    fn push_error(&mut self, shard: &Shard, id: u64, code: ErrorCode) {
        let reply = ErrorReplyView {
            code: code as u16,
            message: StrView(&self.message),
        };
        if self
            .encoder
            .push(&mut self.out, verdict_net::frame::KIND_ERROR, id, &reply)
            .is_err()
        {
            // Only an absurd message could fail; send the code alone rather than nothing.
            let bare = ErrorReplyView {
                code: code as u16,
                message: StrView(""),
            };
            self.encoder
                .push(&mut self.out, verdict_net::frame::KIND_ERROR, id, &bare)
                .expect("an empty error reply always encodes");
        }
        let mut s = shard.stats.borrow_mut();
        s.record_error(code);
        s.responses += 1;
    }

    fn evaluate(&mut self, shard: &Shard, at: &FrameAt) -> Result<(), ErrorCode> {
        self.evaluate_run(shard, at, 1).map(|_| ())
    }

    /// Answers the run of valid evaluate frames that starts with `first` (at most `max`
    /// frames, each answered in order), deciding them as one batch so each model scores them
    /// in one call. Returns the frames and bytes answered; an error (for `first` only, whose
    /// response the caller writes) if `first` itself is not a valid event. A later frame that
    /// is not a valid evaluate ends the run and is answered on its own.
    fn evaluate_run(
        &mut self,
        shard: &Shard,
        first: &FrameAt,
        max: usize,
    ) -> Result<(u64, usize), ErrorCode> {
        let len_max = shard.limits.frame_len_max_bytes;
        let mut frames = std::mem::take(&mut self.run);
        frames.clear();
        let mut events: Vec<&ArchivedEvent> = recycle(std::mem::take(&mut self.run_events));
        let (mut at, mut bytes) = (*first, 0);
        loop {
            let payload = self.recv.payload(&at);
            let Ok(event) = rkyv::access::<ArchivedEvent, rancor::Failure>(payload) else {
                break;
            };
            if validate_event(event).is_err() {
                break;
            }
            frames.push(at);
            events.push(event);
            bytes += at.frame_len;
            if frames.len() >= max {
                break;
            }
            match self.recv.at(bytes, len_max) {
                Scan::Frame(next) if next.header.kind == Kind::Evaluate.request_byte() => at = next,
                _ => break,
            }
        }
        if events.is_empty() {
            self.run = frames;
            self.run_events = recycle(events);
            return Err(self.explain_event(first));
        }
        let published = shard.rules.borrow();
        let mut decided = std::mem::take(&mut self.decided).recycle();
        decide(
            &events,
            &published,
            &mut shard.velocity.borrow_mut(),
            &mut shard.models.borrow_mut(),
            &shard.clock,
            &mut self.scratch,
            &mut decided,
        );
        let server_ns = shard.clock.delta_as_nanos(self.read_at, shard.clock.raw());
        for ((at, event), verdict) in frames.iter().zip(&events).zip(&decided.verdicts) {
            let view = verdict.view(event, &decided, shard.index, server_ns);
            let response = Kind::Evaluate.response_byte();
            if self
                .encoder
                .push(&mut self.out, response, at.header.id, &view)
                .is_err()
            {
                // A decision of a valid event always encodes; answer anyway if it did not.
                let reply = ErrorReplyView {
                    code: ErrorCode::Internal as u16,
                    message: StrView("could not encode the decision"),
                };
                let kind = verdict_net::frame::KIND_ERROR;
                let _ = self.encoder.push(&mut self.out, kind, at.header.id, &reply);
                shard.stats.borrow_mut().record_error(ErrorCode::Internal);
            }
        }
        let n = events.len() as u64;
        self.decided = decided.recycle();
        self.run = frames;
        self.run_events = recycle(events);
        shard.stats.borrow_mut().events += n;
        Ok((n, bytes))
    }

    /// Why the evaluate frame `at` does not hold a valid event (error path: allocates).
    fn explain_event(&mut self, at: &FrameAt) -> ErrorCode {
        let payload = self.recv.payload(at);
        match rkyv::access::<ArchivedEvent, rancor::Failure>(payload) {
            Err(_) => explain_invalid::<ArchivedEvent>(payload, &mut self.message, "Event"),
            Ok(event) => {
                self.message.clear();
                if let Err(e) = validate_event(event) {
                    let _ = write!(self.message, "{e}");
                }
                ErrorCode::BadField
            }
        }
    }

    fn evaluate_batch(&mut self, shard: &Shard, at: &FrameAt) -> Result<(), ErrorCode> {
        let max = shard.limits.batch_events_max as usize;
        let payload = self.recv.payload(at);
        let Ok(batch) = rkyv::access::<ArchivedEvaluateBatch, rancor::Failure>(payload) else {
            return Err(explain_invalid::<ArchivedEvaluateBatch>(
                payload,
                &mut self.message,
                "EvaluateBatch",
            ));
        };
        let n = batch.events.len();
        if n == 0 || n > max {
            self.message.clear();
            let _ = write!(
                self.message,
                "evaluate-batch carries {n} events; the limit is 1..={max} (limits.batch_events_max)"
            );
            return Err(ErrorCode::BatchTooLarge);
        }
        for (i, event) in batch.events.iter().enumerate() {
            if let Err(e) = validate_event(event) {
                self.message.clear();
                let _ = write!(self.message, "event {i}: {e}");
                return Err(ErrorCode::BadField);
            }
        }
        let published = shard.rules.borrow();
        let mut decided = std::mem::take(&mut self.decided).recycle();
        let mut events: Vec<&ArchivedEvent> = recycle(std::mem::take(&mut self.run_events));
        events.extend(batch.events.iter());
        decide(
            &events,
            &published,
            &mut shard.velocity.borrow_mut(),
            &mut shard.models.borrow_mut(),
            &shard.clock,
            &mut self.scratch,
            &mut decided,
        );
        let server_ns = shard.clock.delta_as_nanos(self.read_at, shard.clock.raw());
        let mut views = recycle(std::mem::take(&mut self.views));
        for (event, verdict) in batch.events.iter().zip(&decided.verdicts) {
            views.push(verdict.view(event, &decided, shard.index, server_ns));
        }
        let reply = DecisionBatchView {
            decisions: SliceView(&views),
        };
        let pushed = self.encoder.push(
            &mut self.out,
            Kind::EvaluateBatch.response_byte(),
            at.header.id,
            &reply,
        );
        self.views = recycle(views);
        self.decided = decided.recycle();
        self.run_events = recycle(events);
        pushed.map_err(|_| self.internal("decision batch"))?;
        let mut s = shard.stats.borrow_mut();
        s.events += n as u64;
        s.record_batch_events(n as u64);
        Ok(())
    }

    async fn stats(&mut self, shard: &Shard, id: u64) -> Result<(), ErrorCode> {
        let mut snapshots = vec![shard.snapshot()];
        if let Some(mesh) = &shard.mesh {
            let timeout = Duration::from_millis(shard.limits.mesh_reply_timeout_ms);
            match mesh.gather_stats(timeout).await {
                Ok(others) => snapshots.extend(others),
                Err(e) => {
                    self.message.clear();
                    let (code, why) = match e {
                        MeshError::Overloaded => {
                            (ErrorCode::Overloaded, "a shard's mesh queue is full")
                        }
                        MeshError::Timeout => {
                            (ErrorCode::Unavailable, "a shard did not answer in time")
                        }
                    };
                    let _ = write!(self.message, "stats: {why}");
                    return Err(code);
                }
            }
        }
        // The control thread adds the kernel columns (it owns the probes) and merges.
        let (reply, answer) = flume::bounded(1);
        if shard
            .control
            .send(ShardEvent::Stats { snapshots, reply })
            .is_err()
        {
            self.message.clear();
            self.message
                .push_str("stats: the control thread has stopped");
            return Err(ErrorCode::Unavailable);
        }
        let timeout = Duration::from_millis(shard.limits.mesh_reply_timeout_ms);
        let answered = future::or(async { answer.recv_async().await.ok() }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        let Some(reply) = answered else {
            self.message.clear();
            self.message
                .push_str("stats: the control thread did not answer in time");
            return Err(ErrorCode::Unavailable);
        };
        self.encoder
            .push(&mut self.out, Kind::Stats.response_byte(), id, &reply)
            .map_err(|_| self.internal("stats reply"))
    }
}

impl Connection {
    /// Refused (error 11) unless `[admin] wire_reload` keeps reloads on the data port; then
    /// hands the reload to the reload thread and waits for its answer: this connection's
    /// later requests wait too (they are answered in order), other connections do not.
    async fn reload(&mut self, shard: &Shard, at: &FrameAt) -> Result<(), ErrorCode> {
        let Some(reloads) = &shard.reloads else {
            self.message.clear();
            self.message.push_str(
                "reload is not served on the data port: use POST /v1/reload on the admin port \
                 (`verdict reload --admin ADDR --token-file FILE`), or set [admin] wire_reload = true \
                 on a trusted network",
            );
            return Err(ErrorCode::Forbidden);
        };
        let payload = self.recv.payload(at);
        let Ok(request) = rkyv::access::<ArchivedReloadRequest, rancor::Failure>(payload) else {
            return Err(explain_invalid::<ArchivedReloadRequest>(
                payload,
                &mut self.message,
                "ReloadRequest",
            ));
        };
        let rules_path = request.rules_path.as_str();
        if rules_path.len() > RULES_PATH_LEN_MAX_BYTES {
            self.message.clear();
            let _ = write!(
                self.message,
                "rules_path: longer than {RULES_PATH_LEN_MAX_BYTES} bytes"
            );
            return Err(ErrorCode::BadField);
        }
        let answer = match reloads.submit(rules_path.to_string()) {
            Ok(answer) => answer,
            Err(SubmitError::Busy) => {
                self.message.clear();
                self.message
                    .push_str("reload: reloads are queued already; retry when they are done");
                return Err(ErrorCode::Overloaded);
            }
            Err(SubmitError::Stopped) => {
                self.message.clear();
                self.message.push_str("reload: the engine is shutting down");
                return Err(ErrorCode::Unavailable);
            }
        };
        let timeout = Duration::from_millis(shard.limits.reload_timeout_ms);
        let answered = future::or(async { answer.recv_async().await.ok() }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        let Some(reply) = answered else {
            self.message.clear();
            let _ = write!(
                self.message,
                "reload: no answer within {} ms (limits.reload_timeout_ms); the current epoch stays unless it publishes later",
                shard.limits.reload_timeout_ms
            );
            return Err(ErrorCode::Unavailable);
        };
        // A reload is a boundary between requests: later requests here see the new epoch.
        shard.refresh_rules();
        self.encoder
            .push(
                &mut self.out,
                Kind::Reload.response_byte(),
                at.header.id,
                &reply,
            )
            .map_err(|_| self.internal("reload reply"))
    }
}

/// Longest `rules_path` a reload request may carry.
const RULES_PATH_LEN_MAX_BYTES: usize = 4096;

/// Explains why `payload` is not a valid `T` (error path only: this allocates).
fn explain_invalid<T>(payload: &[u8], message: &mut String, what: &str) -> ErrorCode
where
    T: rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    message.clear();
    let why = rkyv::access::<T, rancor::Error>(payload)
        .err()
        .map_or_else(|| "unknown".to_string(), |e| e.to_string());
    let _ = write!(message, "payload is not a valid {what}: {why}");
    ErrorCode::InvalidPayload
}

/// Writes one error frame and closes: for connections refused before they are served, on
/// plaintext ports (a TLS port closes a refused connection without a handshake).
pub async fn send_error_and_close(
    shard: &Shard,
    stream: TcpStream,
    id: u64,
    code: ErrorCode,
    message: &str,
) {
    let mut stream = Transport::Plain(stream);
    let mut out = AlignedVec::new();
    let reply = ErrorReplyView {
        code: code as u16,
        message: StrView(message),
    };
    if FrameEncoder::new()
        .push(&mut out, verdict_net::frame::KIND_ERROR, id, &reply)
        .is_ok()
        && stream.write_all(&out).await.is_ok()
    {
        let mut s = shard.stats.borrow_mut();
        s.bytes_out += out.len() as u64;
        s.record_error(code);
    }
    linger_close(shard, stream).await;
}
