//! HTTP/1.1 with JSON bodies on the data cores (`listen.http_port`, every shard accepting on
//! it): `POST /v1/decide`, `POST /v1/decide/batch`, `GET /v1/topology`. The API is described
//! in `net/openapi.yaml`.
//!
//! An HTTP connection is a translator in front of the binary one's request pipeline: each
//! request is parsed (httparse, bounded by `limits.http_header_bytes_max` and
//! `http_body_bytes_max`), its JSON turned into the frame it means (an evaluate, an
//! evaluate-batch, a topology request), and the frames are answered by
//! [`request::answer_frames`], exactly as on the binary port: the same validation, limits,
//! routing (events forwarded to their account's owner), decision log and stats. The answers
//! are turned back into JSON: a decision in the form `verdict send` prints, or an error as
//! `{"code", "name", "message"}` with the error frame's code and message and the status of
//! [`ErrorCode::http_status`]. Requests that never become frames (unknown paths, malformed
//! HTTP or JSON, bodies over the limits) get the same error body with the code closest in
//! meaning.
//!
//! Keep-alive and pipelining: every whole request a read delivered (at most
//! `pipeline_depth_max`, up to and including the first batch) is answered in order, the
//! pipelined decides as one batch, and the answers go out in one write. A request that
//! breaks HTTP framing (malformed head, oversized, chunked) is answered and the connection
//! closed. A request must arrive whole within `limits.frame_timeout_ms` of its first byte.

use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use rkyv::rancor;
use verdict_net::frame::{FRAME_ALIGN, HEADER_LEN, KIND_ERROR, RecvBuffer, Scan, scan};
use verdict_net::json::{
    BatchForm, error_to_json, event_from_json, events_from_json_batch, topology_to_json,
    write_decision_json,
};
use verdict_net::{
    ArchivedDecision, ArchivedDecisionBatch, ArchivedErrorReply, ArchivedTopologyReply, ErrorCode,
    EvaluateBatch, FrameEncoder, Kind, TopologyReply,
};

use crate::connection::{self, ReadOutcome};
use crate::http::{self, BoundKeys, Bounds, HttpError};
use crate::request::{self, Responder, evaluate::Evaluator};
use crate::shard::{ConnectionSlot, Shard};
use crate::transport::Transport;

/// The data port's HTTP bounds' keys.
const KEYS: BoundKeys = BoundKeys {
    header_bytes_max: "limits.http_header_bytes_max",
    body_bytes_max: "limits.http_body_bytes_max",
};

/// The size a connection's buffer of request frames starts with and shrinks back to.
const FRAMES_BASE_BYTES: usize = 8 * 1024;

/// What the HTTP port serves, for 404 messages.
const ENDPOINTS: &str = "POST /v1/decide, POST /v1/decide/batch and GET /v1/topology";

/// How a request is answered.
enum Answer {
    /// By the response frame whose id is the request's place in the round.
    Frame(Form),
    /// Here, without the pipeline.
    Error {
        code: ErrorCode,
        /// The HTTP status (usually `code.http_status()`; HTTP framing errors have their own).
        status: u16,
        message: String,
        /// The methods a path takes (405).
        allow: Option<&'static str>,
    },
}

/// The JSON a response frame becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Decision,
    Batch(BatchForm),
    Topology,
}

/// One parsed request waiting for its answer.
struct Pending {
    answer: Answer,
    /// Close the connection once this request's answer is written.
    close: bool,
    /// HTTP/1.0 keep-alive: say so in the response.
    keep_alive_1_0: bool,
    /// A HEAD request: the response's head only (its Content-Length that of the body).
    head_only: bool,
}

/// An HTTP connection's buffers, reused for its whole life.
struct HttpConnection {
    /// Bytes read, not yet parsed: `inbox[..filled]`. Its size is `read_buffer_bytes`, grown
    /// (doubling, as bytes arrive) to fit one request of up to the header and body bounds.
    inbox: Vec<u8>,
    filled: usize,
    base_len: usize,
    /// The round's requests as frames, for the pipeline.
    frames: RecvBuffer,
    encoder: FrameEncoder,
    out: Responder,
    evaluator: Evaluator,
    pending: Vec<Pending>,
    /// The round's HTTP responses, written in one go.
    write: Vec<u8>,
    /// One response's body, before its head (which carries its length) is written.
    body: Vec<u8>,
    /// `100 Continue` was sent for the request at the front of the inbox.
    continued: bool,
    read_at: u64,
    /// When the first byte of the incomplete request at the front arrived.
    partial_since: Option<Instant>,
}

/// Serves one HTTP connection until the peer closes, a request that breaks HTTP framing or
/// asks to close, an I/O error or timeout, or the end of the shutdown drain. `slot` holds
/// the connection's place and its share of the shard's connection memory until this
/// returns.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, slot: ConnectionSlot) {
    let limits = &shard.limits;
    let frame_timeout = Duration::from_millis(limits.frame_timeout_ms);
    let Some(mut stream) = connection::open(&shard, stream).await else {
        return;
    };
    let waiter = shard.drain.waiter();
    let base_len = limits.read_buffer_bytes as usize;
    let mut conn = HttpConnection {
        inbox: vec![0; base_len],
        filled: 0,
        base_len,
        // Room for a round of a few dozen events without growing (a larger round grows it
        // and it shrinks back once answered).
        frames: RecvBuffer::new(FRAMES_BASE_BYTES),
        encoder: FrameEncoder::new(),
        out: Responder::default(),
        evaluator: Evaluator::default(),
        pending: Vec::new(),
        write: Vec::new(),
        body: Vec::new(),
        continued: false,
        read_at: 0,
        partial_since: None,
    };
    loop {
        let wants = conn.parse(&shard);
        if conn.pending.is_empty() {
            // Room for a large request comes out of the shard's connection memory; a client
            // waiting for `100 Continue` is told first whether its whole body will fit.
            let grow_to = if wants.continue_now {
                wants.need.max(conn.inbox.len())
            } else {
                conn.grow_to(wants.need)
            };
            if grow_to > conn.inbox.len() || wants.continue_now {
                if !slot.hold_grown(grow_to.saturating_sub(conn.base_len) as u64) {
                    let message = format!(
                        "no room for a {grow_to}-byte request buffer: shard {} has {} of {} bytes of connection memory in use (limits.connection_memory_bytes_max); closing the connection",
                        shard.index,
                        shard.buffers.in_use_bytes(),
                        shard.buffers.budget_bytes()
                    );
                    conn.refuse(ErrorCode::Overloaded, 503, message);
                    conn.respond(&shard);
                    let _ = stream.write_all(&conn.write).await;
                    break;
                }
                conn.inbox.resize(grow_to, 0);
            }
            if wants.continue_now {
                conn.continued = true;
                if stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let deadline = conn.partial_since.map(|since| since + frame_timeout);
            let space = &mut conn.inbox[conn.filled..];
            let read =
                match connection::read_some(&shard, &waiter, &mut stream, space, deadline).await {
                    ReadOutcome::Bytes(n) => n,
                    ReadOutcome::Draining => continue,
                    ReadOutcome::Done => break,
                };
            conn.filled += read;
            conn.read_at = shard.clock.raw();
            conn.partial_since.get_or_insert_with(Instant::now);
            shard.stats.borrow_mut().bytes_in += read as u64;
            continue;
        }
        // The round's answers are held until written: their room (estimated from the frames
        // they answer) comes out of the connection memory budget first, or the round's
        // requests are refused with 503 undecided.
        let inbox_grown = (conn.inbox.len() - conn.base_len) as u64;
        let answers = answer_room_bytes(conn.frames.buffered(), conn.pending.len());
        if !slot.hold_grown(inbox_grown + answers) {
            conn.refuse_round(&shard);
        }
        conn.out.out = shard.buffers.take_out();
        // Every request of the round is answered before any is written: the round is bounded
        // (at most `pipeline_depth_max` requests, one batch at most).
        while conn.frames.buffered() > 0 {
            let answered = request::answer_frames(
                &shard,
                &mut conn.frames,
                &mut conn.evaluator,
                &mut conn.out,
                conn.read_at,
                usize::MAX,
            )
            .await;
            debug_assert!(answered.frames > 0, "the round's frames are whole");
            if answered.frames == 0 {
                break;
            }
        }
        let close = conn.respond(&shard);
        shard
            .buffers
            .give_back_out(std::mem::take(&mut conn.out.out));
        futures_lite::future::yield_now().await;
        if stream.write_all(&conn.write).await.is_err() {
            break;
        }
        shard.stats.borrow_mut().bytes_out += conn.write.len() as u64;
        // A partial request left after the round has its whole time from now (the round's
        // answering and writing are not its sender's delay).
        conn.partial_since = (conn.filled > 0).then(Instant::now);
        conn.shrink();
        slot.hold_grown((conn.inbox.len() - conn.base_len) as u64);
        if close {
            break;
        }
    }
    drop(slot);
    connection::linger_close(&shard, stream).await;
}

/// The room a round's answers may take: JSON decisions run up to about twice their
/// events' frames, plus a response head and error body per request.
fn answer_room_bytes(frame_bytes: usize, requests: usize) -> u64 {
    (2 * frame_bytes + 512 * requests) as u64
}

/// What parsing the inbox found it needs.
struct Wants {
    /// Bytes the inbox must hold for the request at its front to be whole (0: unknown yet).
    need: usize,
    /// The request at the front waits for `100 Continue` before sending its body.
    continue_now: bool,
}

impl HttpConnection {
    /// Parses the whole requests at the front of the inbox (at most `pipeline_depth_max`,
    /// up to the first batch or the first that closes the connection) into `pending`, and
    /// the frames they mean into `frames`.
    fn parse(&mut self, shard: &Shard) -> Wants {
        let limits = &shard.limits;
        let bounds = Bounds {
            header_bytes_max: limits.http_header_bytes_max as usize,
            body_bytes_max: limits.http_body_bytes_max as usize,
            keys: KEYS,
        };
        let mut offset = 0;
        let mut wants = Wants {
            need: 0,
            continue_now: false,
        };
        while self.pending.len() < limits.pipeline_depth_max as usize && offset < self.filled {
            let buf = &self.inbox[offset..self.filled];
            let head = match http::parse_head(buf, bounds, |_, _| {}) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(e) => {
                    // HTTP framing is lost: answer this, then close.
                    let (code, message) = http_error(&e);
                    self.refuse(code, e.status(), message);
                    offset = self.filled;
                    break;
                }
            };
            let len = head.head_len + head.body_len;
            if buf.len() < len {
                wants.need = offset + len;
                // HTTP/1.0 clients are never sent a 1xx (RFC 9110 15.2).
                wants.continue_now =
                    head.expects_continue && head.minor_version == 1 && !self.continued;
                break;
            }
            self.continued = false;
            let body = &buf[head.head_len..len];
            let id = self.pending.len() as u64;
            let answer = route(
                shard,
                head.method,
                head.path,
                body,
                id,
                &mut self.frames,
                &mut self.encoder,
            );
            let batch = matches!(answer, Answer::Frame(Form::Batch(_)));
            self.pending.push(Pending {
                answer,
                close: head.close,
                keep_alive_1_0: head.minor_version == 0 && !head.close,
                head_only: head.method == "HEAD",
            });
            offset += len;
            if head.close || batch {
                break;
            }
        }
        self.inbox.copy_within(offset..self.filled, 0);
        self.filled -= offset;
        if offset > 0 {
            wants.need = wants.need.saturating_sub(offset);
        }
        wants
    }

    /// The inbox size to read into next: doubled when full, up to what the request at the
    /// front needs (or the largest request when that is not known yet).
    fn grow_to(&self, need: usize) -> usize {
        let len = self.inbox.len();
        if self.filled < len {
            len
        } else if need > len {
            (len * 2).min(need)
        } else {
            len * 2
        }
    }

    /// Answers the request about to be parsed with an error and closes the connection (its
    /// bytes cannot be skipped).
    fn refuse(&mut self, code: ErrorCode, status: u16, message: String) {
        self.pending.push(Pending {
            answer: Answer::Error {
                code,
                status,
                message,
                allow: None,
            },
            close: true,
            keep_alive_1_0: false,
            head_only: false,
        });
    }

    /// Answers every request of the round that would have been decided with error 8 (no room
    /// for its answer), without deciding it.
    fn refuse_round(&mut self, shard: &Shard) {
        let message = format!(
            "no room for this round's answers: shard {} has {} of {} bytes of connection memory in use (limits.connection_memory_bytes_max); retry",
            shard.index,
            shard.buffers.in_use_bytes(),
            shard.buffers.budget_bytes()
        );
        for pending in &mut self.pending {
            if matches!(pending.answer, Answer::Frame(_)) {
                pending.answer = Answer::Error {
                    code: ErrorCode::Overloaded,
                    status: ErrorCode::Overloaded.http_status(),
                    message: message.clone(),
                    allow: None,
                };
            }
        }
        while let Scan::Frame(at) = self.frames.front(u32::MAX) {
            self.frames.consume(at.frame_len);
        }
    }

    /// Turns the round's answers into HTTP responses in `write`; whether the connection
    /// closes after them.
    fn respond(&mut self, shard: &Shard) -> bool {
        self.write.clear();
        let mut frames = 0;
        let mut close = false;
        for (id, pending) in self.pending.drain(..).enumerate() {
            self.body.clear();
            let mut extra = None;
            let (status, content_type) = match &pending.answer {
                Answer::Error {
                    code,
                    status,
                    message,
                    allow,
                } => {
                    let mut s = shard.stats.borrow_mut();
                    s.requests += 1;
                    s.responses += 1;
                    s.record_error(*code);
                    drop(s);
                    write_json(&mut self.body, &error_to_json(*code as u16, message));
                    extra = allow.map(|methods| ("Allow", methods));
                    if *code == ErrorCode::Overloaded {
                        extra = Some(("Retry-After", "1"));
                    }
                    (*status, "application/json")
                }
                Answer::Frame(form) => {
                    let rest = &self.out.out[frames..];
                    let Scan::Frame(at) = scan(rest, u32::MAX) else {
                        unreachable!("every frame of the round has its answer");
                    };
                    debug_assert_eq!(at.header.id, id as u64);
                    frames += at.frame_len;
                    let payload =
                        &rest[at.payload_start..at.payload_start + at.header.len as usize];
                    let (status, content_type) =
                        frame_to_json(at.header.kind, payload, *form, &mut self.body);
                    if status == ErrorCode::Overloaded.http_status() {
                        extra = Some(("Retry-After", "1"));
                    }
                    (status, content_type)
                }
            };
            close |= pending.close;
            write_head(
                &mut self.write,
                status,
                content_type,
                self.body.len(),
                extra,
                if pending.close {
                    Some("close")
                } else if pending.keep_alive_1_0 {
                    Some("keep-alive")
                } else {
                    None
                },
            );
            if !pending.head_only {
                self.write.extend_from_slice(&self.body);
            }
            if pending.close {
                break;
            }
        }
        close
    }

    /// Gives back what a large round grew.
    fn shrink(&mut self) {
        if self.inbox.len() > self.base_len && self.filled <= self.base_len {
            self.inbox.truncate(self.base_len);
            self.inbox.shrink_to_fit();
        }
        for buf in [&mut self.write, &mut self.body] {
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
        }
    }
}

/// The code and message an HTTP framing error is answered with.
fn http_error(e: &HttpError) -> (ErrorCode, String) {
    let code = match e {
        HttpError::HeadersTooLarge { .. } | HttpError::BodyTooLarge { .. } => {
            ErrorCode::FrameTooLarge
        }
        HttpError::Version => ErrorCode::BadVersion,
        HttpError::Malformed(_) | HttpError::LengthRequired => ErrorCode::InvalidPayload,
    };
    (code, format!("{e}; closing the connection"))
}

/// Routes one whole request: the frame it means goes into `frames` (with id `id`), or the
/// error it gets is returned.
fn route(
    shard: &Shard,
    method: &str,
    path: &str,
    body: &[u8],
    id: u64,
    frames: &mut RecvBuffer,
    encoder: &mut FrameEncoder,
) -> Answer {
    let wrong_method = |allow: &'static str| Answer::Error {
        code: ErrorCode::UnknownKind,
        status: 405,
        message: format!("{path} takes {allow}, not {method}"),
        allow: Some(allow),
    };
    match path {
        "/v1/decide" if method == "POST" => {}
        "/v1/decide/batch" if method == "POST" => {}
        "/v1/topology" if method == "GET" || method == "HEAD" => {
            frames.append_with(|out| encoder.push_empty(out, Kind::Topology.request_byte(), id));
            return Answer::Frame(Form::Topology);
        }
        "/v1/decide" | "/v1/decide/batch" => return wrong_method("POST"),
        "/v1/topology" => return wrong_method("GET"),
        _ => {
            return refused(
                ErrorCode::UnknownKind,
                format!("no endpoint {method} {path}; this port serves {ENDPOINTS}"),
            );
        }
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return refused(ErrorCode::InvalidPayload, "the body is not UTF-8".into());
    };
    let json_error = |e: verdict_net::json::JsonError| {
        let code = if e.is_syntax() {
            ErrorCode::InvalidPayload
        } else {
            ErrorCode::BadField
        };
        refused(code, e.to_string())
    };
    let len_max = shard.limits.frame_len_max_bytes;
    let (kind, form, encoded) = if path == "/v1/decide" {
        let event = match event_from_json(text) {
            Ok(event) => event,
            Err(e) => return json_error(e),
        };
        let kind = Kind::Evaluate.request_byte();
        let encoded =
            frames.append_with(|out| push_within(encoder, out, kind, id, &event, len_max));
        (kind, Form::Decision, encoded)
    } else {
        let (events, batch_form) = match events_from_json_batch(text) {
            Ok(parsed) => parsed,
            Err(e) => return json_error(e),
        };
        let (n, max) = (events.len(), shard.limits.batch_events_max as usize);
        if n == 0 || n > max {
            return refused(
                ErrorCode::BatchTooLarge,
                request::evaluate::batch_size_message(n, max),
            );
        }
        let batch = EvaluateBatch { events };
        let kind = Kind::EvaluateBatch.request_byte();
        let encoded =
            frames.append_with(|out| push_within(encoder, out, kind, id, &batch, len_max));
        (kind, Form::Batch(batch_form), encoded)
    };
    match encoded {
        Ok(()) => Answer::Frame(form),
        Err(None) => refused(
            ErrorCode::Internal,
            format!("could not encode the kind {kind:#04x} request"),
        ),
        Err(Some(len)) => refused(
            ErrorCode::FrameTooLarge,
            format!(
                "the body's events take {len} bytes as a frame payload; the limit is {len_max} (limits.frame_len_max_bytes)"
            ),
        ),
    }
}

/// An error answered here, with the code's own status.
fn refused(code: ErrorCode, message: String) -> Answer {
    Answer::Error {
        code,
        status: code.http_status(),
        message,
        allow: None,
    }
}

/// Appends a frame of `value` unless its payload would pass `len_max` bytes (then nothing is
/// appended: `Err(Some(len))`); `Err(None)` if it cannot be encoded.
fn push_within<T>(
    encoder: &mut FrameEncoder,
    out: &mut rkyv::util::AlignedVec<FRAME_ALIGN>,
    kind: u8,
    id: u64,
    value: &T,
    len_max: u32,
) -> Result<(), Option<usize>>
where
    T: for<'a, 'b> rkyv::Serialize<verdict_net::frame::PayloadSerializer<'a, 'b>>,
{
    let start = out.len();
    encoder.push(out, kind, id, value).map_err(|_| None)?;
    let len_bytes: [u8; 4] = out[start + 4..start + 8].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes);
    if len > len_max {
        out.resize(start, 0);
        return Err(Some(len as usize));
    }
    debug_assert!(out.len() - start >= HEADER_LEN);
    Ok(())
}

/// Writes the JSON of one response frame into `body`; its status and content type.
fn frame_to_json(kind: u8, payload: &[u8], form: Form, body: &mut Vec<u8>) -> (u16, &'static str) {
    const JSON: &str = "application/json";
    let internal = |body: &mut Vec<u8>, what: &str| {
        body.clear();
        let message = format!("the {what} could not be read back (a bug)");
        write_json(body, &error_to_json(ErrorCode::Internal as u16, &message));
        (ErrorCode::Internal.http_status(), JSON)
    };
    if kind == KIND_ERROR {
        let Ok(reply) = rkyv::access::<ArchivedErrorReply, rancor::Error>(payload) else {
            return internal(body, "error reply");
        };
        let code = reply.code.to_native();
        write_json(body, &error_to_json(code, reply.message.as_str()));
        let status = ErrorCode::from_u16(code).map_or(500, ErrorCode::http_status);
        return (status, JSON);
    }
    match form {
        Form::Decision => {
            let Ok(decision) = rkyv::access::<ArchivedDecision, rancor::Error>(payload) else {
                return internal(body, "decision");
            };
            write_decision_json(decision, body);
            body.push(b'\n');
            (200, JSON)
        }
        Form::Batch(batch_form) => {
            let Ok(batch) = rkyv::access::<ArchivedDecisionBatch, rancor::Error>(payload) else {
                return internal(body, "decision batch");
            };
            let lines = batch_form == BatchForm::Lines;
            if !lines {
                body.push(b'[');
            }
            for (i, decision) in batch.decisions.iter().enumerate() {
                if i > 0 && !lines {
                    body.push(b',');
                }
                write_decision_json(decision, body);
                if lines {
                    body.push(b'\n');
                }
            }
            if lines {
                (200, "application/x-ndjson")
            } else {
                body.extend_from_slice(b"]\n");
                (200, JSON)
            }
        }
        Form::Topology => {
            let Ok(topology) = rkyv::access::<ArchivedTopologyReply, rancor::Error>(payload)
                .and_then(rkyv::deserialize::<TopologyReply, rancor::Error>)
            else {
                return internal(body, "topology reply");
            };
            write_json(body, &topology_to_json(&topology));
            (200, JSON)
        }
    }
}

/// Appends `value` as one line of JSON.
fn write_json(body: &mut Vec<u8>, value: &serde_json::Value) {
    serde_json::to_writer(&mut *body, value).expect("a Value always serializes");
    body.push(b'\n');
}

/// Appends a response's status line and headers.
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body_len: usize,
    extra: Option<(&str, &str)>,
    connection: Option<&str>,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n",
        http::reason(status)
    );
    if let Some((name, value)) = extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some(value) = connection {
        let _ = write!(out, "Connection: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Answers a connection refused at accept (over `connections_per_shard_max` or the memory
/// budget) with a 503 and closes it: for plaintext ports only, like the binary refusal.
pub async fn send_error_and_close(
    shard: &Shard,
    stream: TcpStream,
    code: ErrorCode,
    message: &str,
) {
    let mut stream = Transport::Plain(stream);
    let mut body = Vec::new();
    write_json(&mut body, &error_to_json(code as u16, message));
    let mut out = Vec::new();
    write_head(
        &mut out,
        code.http_status(),
        "application/json",
        body.len(),
        Some(("Retry-After", "1")),
        Some("close"),
    );
    out.extend_from_slice(&body);
    if stream.write_all(&out).await.is_ok() {
        let mut s = shard.stats.borrow_mut();
        s.bytes_out += out.len() as u64;
        s.record_error(code);
    }
    connection::linger_close(shard, stream).await;
}
