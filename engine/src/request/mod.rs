//! Request handling: one frame (or a run of evaluate frames) in, exactly one response frame
//! per request out, into the connection's [`Responder`]. The connection loop
//! ([`crate::connection`]) owns the socket, the buffers and the batching; each request kind
//! is a file here:
//! - [`evaluate`]: evaluate and evaluate-batch, decided exactly wherever the events' state
//!   lives ([`crate::aggregator`]);
//! - [`stats`]: every shard's stats over the mesh, merged with the kernel columns;
//! - [`reload`]: kind 0x06, served only where `[admin] wire_reload` allows it;
//! - [`peer`]: kinds 0x10 and 0x11, node to node, and 0x07, the cluster's topology, served
//!   only by a cluster node;
//! - ping and topology are answered here, they carry nothing.

pub mod evaluate;
pub mod peer;
pub mod reload;
pub mod stats;

use std::fmt::Write as _;

use rkyv::{rancor, util::AlignedVec};
use verdict_net::frame::{FRAME_ALIGN, FrameAt, KIND_ERROR, PayloadSerializer, RecvBuffer, Scan};
use verdict_net::{ErrorCode, ErrorReplyView, FrameEncoder, Kind, StrView};

use crate::shard::Shard;

/// Where a connection's answers go: its response buffer, the encoder that appends frames
/// to it, and the message of the error being answered.
pub struct Responder {
    /// Empty and unallocated between batches; taken from `Shard::buffers` for one.
    pub out: AlignedVec<FRAME_ALIGN>,
    encoder: FrameEncoder,
    /// Error messages are formatted here.
    pub message: String,
}

impl Default for Responder {
    fn default() -> Self {
        Responder {
            out: AlignedVec::new(),
            encoder: FrameEncoder::new(),
            message: String::with_capacity(256),
        }
    }
}

impl Responder {
    /// Appends a response frame; `what` names it if it cannot be encoded (then nothing is
    /// appended and the caller answers with the returned error).
    pub fn push<T>(&mut self, kind: u8, id: u64, value: &T, what: &str) -> Result<(), ErrorCode>
    where
        T: for<'a, 'b> rkyv::Serialize<PayloadSerializer<'a, 'b>>,
    {
        self.encoder
            .push(&mut self.out, kind, id, value)
            .map_err(|_| self.internal(what))
    }

    pub fn push_empty(&mut self, kind: u8, id: u64) {
        self.encoder.push_empty(&mut self.out, kind, id);
    }

    fn internal(&mut self, what: &str) -> ErrorCode {
        self.message.clear();
        let _ = write!(self.message, "could not encode the {what}");
        ErrorCode::Internal
    }

    /// Sets the message of the error about to be answered.
    pub fn say(&mut self, message: std::fmt::Arguments<'_>) {
        self.message.clear();
        let _ = self.message.write_fmt(message);
    }

    /// Appends an error frame whose message is `self.message`, and counts it.
    pub fn error(&mut self, shard: &Shard, id: u64, code: ErrorCode) {
        let reply = ErrorReplyView {
            code: code as u16,
            message: StrView(&self.message),
        };
        if self
            .encoder
            .push(&mut self.out, KIND_ERROR, id, &reply)
            .is_err()
        {
            // Only an absurd message could fail; send the code alone rather than nothing.
            let bare = ErrorReplyView {
                code: code as u16,
                message: StrView(""),
            };
            self.encoder
                .push(&mut self.out, KIND_ERROR, id, &bare)
                .expect("an empty error reply always encodes");
        }
        let mut s = shard.stats.borrow_mut();
        s.record_error(code);
        s.responses += 1;
    }

    /// Appends an error frame with a fixed message, and counts it.
    pub fn error_str(&mut self, shard: &Shard, id: u64, code: ErrorCode, message: &str) {
        self.message.clear();
        self.message.push_str(message);
        self.error(shard, id, code);
    }
}

/// What [`answer_frames`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// Requests answered (each with exactly one response frame).
    pub frames: u64,
    /// Framing was lost: the connection must close after its answers are written.
    pub close: bool,
}

/// Answers the whole frames at the front of `recv`, up to `pipeline_depth_max` or until the
/// answers in `out` reach `out_cap` bytes, consuming them. Both the binary connection and
/// the HTTP one (which translates its requests into frames) answer through here, so both
/// get the same validation, limits, routing and stats.
pub async fn answer_frames(
    shard: &Shard,
    recv: &mut RecvBuffer,
    evaluator: &mut evaluate::Evaluator,
    out: &mut Responder,
    read_at: u64,
    out_cap: usize,
) -> Answered {
    let limits = &shard.limits;
    let mut handled = 0u64;
    let mut close = false;
    let started = shard.clock.raw();
    shard.refresh_rules();
    while handled < u64::from(limits.pipeline_depth_max) && out.out.len() < out_cap {
        let at = match recv.front(limits.frame_len_max_bytes) {
            Scan::Incomplete { .. } => break,
            Scan::Broken { id, error } => {
                // Framing is lost: answer this one error, then close.
                out.say(format_args!("{error}; closing the connection"));
                out.error(shard, id, ErrorCode::from(error));
                shard.stats.borrow_mut().requests += 1;
                close = true;
                break;
            }
            Scan::Frame(at) => at,
        };
        // A run of evaluate frames is decided as one batch (one model call for all).
        let (frames, bytes) = if at.header.kind == Kind::Evaluate.request_byte() {
            let max = (u64::from(limits.pipeline_depth_max) - handled) as usize;
            match evaluator.run(shard, recv, &at, max, out, read_at).await {
                Ok((frames, bytes)) => (frames, bytes),
                Err(code) => {
                    out.error(shard, at.header.id, code);
                    (1, at.frame_len)
                }
            }
        } else {
            answer(shard, recv, &at, evaluator, out, read_at).await;
            (1, at.frame_len)
        };
        handled += frames;
        recv.consume(bytes);
        let done = shard.clock.raw();
        let latency = shard.clock.delta_as_nanos(read_at, done);
        let mut s = shard.stats.borrow_mut();
        s.requests += frames;
        for _ in 0..frames {
            s.record_latency_ns(latency);
        }
    }
    // Instances lost to a failing model this batch are replaced now, not on an event's path.
    shard.models.borrow_mut().refill();
    let took = shard.clock.delta_as_nanos(started, shard.clock.raw());
    let mut s = shard.stats.borrow_mut();
    s.record_batch_requests(handled);
    if handled > 0 {
        s.record_batch_ns(took);
    }
    Answered {
        frames: handled,
        close,
    }
}

/// Answers one frame that is not an evaluate (those are answered in runs, see
/// [`evaluate::Evaluator::run`]); every path appends exactly one response frame.
pub async fn answer(
    shard: &Shard,
    recv: &RecvBuffer,
    at: &FrameAt,
    evaluator: &mut evaluate::Evaluator,
    out: &mut Responder,
    read_at: u64,
) {
    let id = at.header.id;
    let Some(kind) = Kind::from_request_byte(at.header.kind) else {
        out.say(format_args!("unknown request kind {:#04x}", at.header.kind));
        return out.error(shard, id, ErrorCode::UnknownKind);
    };
    if kind.payload_is_empty() && at.header.len != 0 {
        out.say(format_args!(
            "a {kind:?} request carries no payload, got {} bytes",
            at.header.len
        ));
        return out.error(shard, id, ErrorCode::InvalidPayload);
    }
    let payload = recv.payload(at);
    let result = match kind {
        Kind::Ping => {
            out.push_empty(kind.response_byte(), id);
            Ok(())
        }
        Kind::Evaluate => {
            // A lone evaluate that did not start a run: answered the same way.
            return evaluator
                .run(shard, recv, at, 1, out, read_at)
                .await
                .map_or_else(
                    |code| out.error(shard, id, code),
                    |(frames, _)| shard.stats.borrow_mut().responses += frames,
                );
        }
        Kind::EvaluateBatch => evaluator.batch(shard, payload, id, out, read_at).await,
        Kind::Topology => out.push(kind.response_byte(), id, &shard.topology, "topology reply"),
        Kind::Stats => stats::answer(shard, id, out).await,
        Kind::Reload => reload::answer(shard, payload, id, out).await,
        Kind::ClusterTopology => peer::topology(shard, id, out),
        Kind::PeerDecide => peer::decide(shard, evaluator, payload, id, out, read_at).await,
        Kind::PeerRecord => peer::record(shard, payload, id, out),
    };
    match result {
        Ok(()) => shard.stats.borrow_mut().responses += 1,
        Err(code) => out.error(shard, id, code),
    }
}

/// The answer the control or reload thread sends on `answer`, or `None` past `timeout`.
pub async fn answer_within<T>(
    answer: flume::Receiver<T>,
    timeout: std::time::Duration,
) -> Option<T> {
    futures_lite::future::or(async { answer.recv_async().await.ok() }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await
}

/// Explains why `payload` is not a valid `T` (error path only: this allocates).
pub fn explain_invalid<T>(payload: &[u8], out: &mut Responder, what: &str) -> ErrorCode
where
    T: rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    let why = rkyv::access::<T, rancor::Error>(payload)
        .err()
        .map_or_else(|| "unknown".to_string(), |e| e.to_string());
    out.say(format_args!("payload is not a valid {what}: {why}"));
    ErrorCode::InvalidPayload
}
