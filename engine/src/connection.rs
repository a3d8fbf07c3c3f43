//! One client connection's I/O: read -> whole frames -> answers ([`crate::request`]) ->
//! write. Requests on a connection are answered in order, each exactly once.
//!
//! A *batch* is every whole frame one read delivered (at most `pipeline_depth_max`): they are
//! decoded in place from the 16-aligned receive buffer (no copy), answered into the
//! connection's response buffer, and the response buffer goes out in one `write_all`. While
//! it is being written the connection reads nothing more, so a slow reader meets TCP
//! backpressure instead of growing server memory.
//!
//! Every batch is decided by the shard's current rule set: the shard checks the rule epoch
//! once at the start of each batch (one atomic load) and swaps sets only there.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::drain::Waiter;
use crate::request::{self, Responder, evaluate::Evaluator};
use crate::shard::{ConnectionSlot, Shard};
use crate::transport::Transport;
use futures_lite::{AsyncReadExt, future};
use glommio::net::TcpStream;
use rkyv::util::AlignedVec;
use verdict_net::frame::{RecvBuffer, Scan};
use verdict_net::{ErrorCode, ErrorReplyView, FrameEncoder, StrView};

/// A connection's buffers, reused for its whole life (the response buffer only while
/// answers wait to be written: it comes from the shard's pool).
struct Connection {
    recv: RecvBuffer,
    out: Responder,
    evaluator: Evaluator,
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
    let frame_timeout = Duration::from_millis(limits.frame_timeout_ms);
    let Some(mut stream) = open(&shard, stream).await else {
        return;
    };
    let waiter = shard.drain.waiter();
    let mut conn = Connection {
        recv: RecvBuffer::new(limits.read_buffer_bytes as usize),
        out: Responder::default(),
        evaluator: Evaluator::default(),
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
            let space = conn.recv.read_space(limits.frame_len_max_bytes);
            let read = match read_some(&shard, &waiter, &mut stream, space, deadline).await {
                ReadOutcome::Bytes(n) => n,
                ReadOutcome::Draining => continue,
                ReadOutcome::Done => break,
            };
            conn.recv.filled(read);
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
        conn.out.out = shard.buffers.take_out();
        let answered = request::answer_frames(
            &shard,
            &mut conn.recv,
            &mut conn.evaluator,
            &mut conn.out,
            conn.read_at,
            out_cap,
        )
        .await;
        let consumed = answered.frames > 0;
        // A partial frame left after whole ones began arriving with the last read.
        if conn.recv.buffered() == 0 {
            conn.partial_since = None;
        } else if consumed {
            conn.partial_since = Some(Instant::now());
        }
        if !conn.out.out.is_empty() {
            // Let every other connection that is ready decide its batch before this one
            // sends: the shard's sends then leave back to back, and a client woken by the
            // first finds the rest already there, instead of being woken once per response
            // (on loopback each wake-up of a sleeping client costs the sender an IPI). One
            // trip through the run queue; measured in the README's Performance section.
            futures_lite::future::yield_now().await;
            if stream.write_all(&conn.out.out).await.is_err() {
                break;
            }
            shard.stats.borrow_mut().bytes_out += conn.out.out.len() as u64;
        }
        shard
            .buffers
            .give_back_out(std::mem::take(&mut conn.out.out));
        // Written: the answers' reservation goes back; what the receive buffer holds stays.
        slot.hold_grown((conn.recv.len() - conn.recv.base_len()) as u64);
        if answered.close {
            break;
        }
    }
    drop(slot);
    linger_close(&shard, stream).await;
}

/// Sets a new connection's socket options and, under TLS, completes the handshake (bounded
/// like a frame); `None` if it failed (the peer got rustls' alert and the close).
pub(crate) async fn open(shard: &Shard, stream: TcpStream) -> Option<Transport> {
    let limits = &shard.limits;
    let _ = stream.set_nodelay(true);
    let idle = (limits.idle_timeout_ms > 0).then(|| Duration::from_millis(limits.idle_timeout_ms));
    let _ = stream.set_read_timeout(idle);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(limits.write_timeout_ms)));
    let frame_timeout = Duration::from_millis(limits.frame_timeout_ms);
    // A peer that does not speak TLS (or lacks a required client certificate) gets rustls'
    // alert and the close.
    let tls = shard.rules.borrow().tls.clone();
    match Transport::accept(stream, tls, Instant::now() + frame_timeout).await {
        Ok(transport) => Some(transport),
        Err((_, socket)) => {
            shard.stats.borrow_mut().tls_handshakes_failed += 1;
            if let Some(socket) = socket {
                linger_close(shard, Transport::Plain(socket)).await;
            }
            None
        }
    }
}

/// No room in the shard's connection memory for the frame arriving: error 8, then close
/// (its bytes cannot be skipped without reading them).
async fn refuse_room(shard: &Shard, conn: &mut Connection, stream: &mut Transport, len: usize) {
    let id = match conn.recv.front(shard.limits.frame_len_max_bytes) {
        Scan::Incomplete { .. } => conn.recv.front_id().unwrap_or(0),
        _ => 0,
    };
    conn.out.say(format_args!(
        "no room for a {len}-byte receive buffer: shard {} has {} of {} bytes of connection memory in use (limits.connection_memory_bytes_max); closing the connection",
        shard.index,
        shard.buffers.in_use_bytes(),
        shard.buffers.budget_bytes()
    ));
    conn.out.out = shard.buffers.take_out();
    conn.out.error(shard, id, ErrorCode::Overloaded);
    shard.stats.borrow_mut().requests += 1;
    if stream.write_all(&conn.out.out).await.is_ok() {
        shard.stats.borrow_mut().bytes_out += conn.out.out.len() as u64;
    }
    shard
        .buffers
        .give_back_out(std::mem::take(&mut conn.out.out));
}

pub(crate) enum ReadOutcome {
    Bytes(usize),
    /// Shutdown began while waiting: read again, now under the drain's quiet timeout.
    Draining,
    /// EOF, error or timeout: the connection is finished.
    Done,
}

/// Reads what the peer sent into `space`; `deadline`: when the partial request already
/// buffered must be whole (the read ends the connection at it).
pub(crate) async fn read_some(
    shard: &Shard,
    waiter: &Waiter,
    stream: &mut Transport,
    space: &mut [u8],
    deadline: Option<Instant>,
) -> ReadOutcome {
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
        Some(Ok(n)) => ReadOutcome::Bytes(n),
    }
}

/// Most bytes read and thrown away while closing, so the peer sees our last frames.
const LINGER_DISCARD_BYTES_MAX: usize = 256 * 1024;

/// Closes so that what we wrote arrives: shut down our sending side, then read and discard
/// whatever the peer still sends (bounded in bytes and by `shutdown_quiet_ms`), because
/// closing a socket with unread input makes the kernel reset the connection and drop our
/// unacknowledged responses, the error frame that explains the close among them.
pub(crate) async fn linger_close(shard: &Shard, mut stream: Transport) {
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
