//! Clients: a blocking one on `std::net::TcpStream` and an async one over any
//! `futures-io` stream (glommio's `TcpStream`, smol's `Async<TcpStream>`, tokio via compat).
//! Both pipeline: `send*` queues request frames, `flush` writes them, `recv` returns responses
//! in request order. The framing and buffering both share live in [`Codec`]; the two clients
//! only add I/O.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rkyv::{
    Archive, Deserialize,
    api::high::{HighDeserializer, HighValidator},
    bytecheck::CheckBytes,
    rancor,
    util::AlignedVec,
};

use crate::frame::{
    FRAME_ALIGN, FRAME_LEN_MAX_DEFAULT_BYTES, FrameEncoder, FrameError, KIND_ERROR, Kind,
    PayloadSerializer, RecvBuffer, Scan,
};
use crate::schema::{
    ClusterTopology, Decision, DecisionBatch, ErrorReply, EvaluateBatch, Event, ReloadReply,
    ReloadRequest, StatsReply, TopologyReply,
};
use crate::tls::Stream;

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("bad response framing: {0}")]
    Frame(FrameError),
    #[error("server error {code} ({name}): {message}")]
    Server {
        code: u16,
        name: &'static str,
        message: String,
    },
    #[error("response payload failed validation: {0}")]
    Decode(String),
    #[error("expected response kind {expected:#04x}, got {got:#04x}")]
    UnexpectedKind { expected: u8, got: u8 },
    #[error("expected response id {expected}, got {got}")]
    IdMismatch { expected: u64, got: u64 },
    #[error("request could not be encoded")]
    Encode,
}

/// One response frame, its payload copied out of the receive buffer (16-aligned).
#[derive(Debug, Clone)]
pub struct Response {
    pub kind: u8,
    pub id: u64,
    payload: AlignedVec<FRAME_ALIGN>,
}

impl Response {
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn is_error(&self) -> bool {
        self.kind == KIND_ERROR
    }

    /// The error this frame carries, if it is an error frame.
    pub fn error(&self) -> Option<ErrorReply> {
        if !self.is_error() {
            return None;
        }
        Some(
            decode::<ErrorReply>(&self.payload).unwrap_or_else(|e| ErrorReply {
                code: 0,
                message: format!("undecodable error payload: {e}"),
            }),
        )
    }

    /// Checks that this answers `id` with a response of `kind` (an error frame becomes
    /// `ClientError::Server`).
    pub fn expect(self, kind: Kind, id: u64) -> Result<Response, ClientError> {
        if self.id != id {
            return Err(ClientError::IdMismatch {
                expected: id,
                got: self.id,
            });
        }
        if let Some(err) = self.error() {
            let name = crate::ErrorCode::from_u16(err.code).map_or("unknown", |c| c.name());
            return Err(ClientError::Server {
                code: err.code,
                name,
                message: err.message,
            });
        }
        if self.kind != kind.response_byte() {
            return Err(ClientError::UnexpectedKind {
                expected: kind.response_byte(),
                got: self.kind,
            });
        }
        Ok(self)
    }

    /// Validates and deserializes the payload.
    pub fn decode<T>(&self) -> Result<T, ClientError>
    where
        T: Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        decode(&self.payload)
    }
}

fn decode<T>(payload: &[u8]) -> Result<T, ClientError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(payload).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Request encoding and response framing, shared by both clients. No I/O.
pub struct Codec {
    encoder: FrameEncoder,
    /// Encoded requests not yet written.
    out: AlignedVec<FRAME_ALIGN>,
    inbuf: RecvBuffer,
    next_id: u64,
    frame_len_max: u32,
    /// Bytes received so far.
    received: u64,
}

/// Initial receive buffer size, in bytes; it grows to fit the largest response seen.
const CLIENT_READ_BUFFER_BYTES: usize = 64 * 1024;

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        Codec {
            encoder: FrameEncoder::new(),
            out: AlignedVec::new(),
            inbuf: RecvBuffer::new(CLIENT_READ_BUFFER_BYTES),
            next_id: 1,
            frame_len_max: FRAME_LEN_MAX_DEFAULT_BYTES,
            received: 0,
        }
    }

    /// Bytes received on this connection so far (whether any answer has begun to arrive).
    pub fn received_bytes(&self) -> u64 {
        self.received
    }

    /// Sets the largest response payload accepted, in bytes.
    pub fn set_frame_len_max(&mut self, bytes: u32) {
        self.frame_len_max = bytes;
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Queues a request with an archived payload; returns its id.
    pub fn queue<T>(&mut self, kind: Kind, value: &T) -> Result<u64, ClientError>
    where
        T: for<'a, 'b> rkyv::Serialize<PayloadSerializer<'a, 'b>>,
    {
        let id = self.take_id();
        self.encoder
            .push(&mut self.out, kind.request_byte(), id, value)
            .map_err(|_| ClientError::Encode)?;
        Ok(id)
    }

    /// Queues a request with an empty payload; returns its id.
    pub fn queue_empty(&mut self, kind: Kind) -> u64 {
        let id = self.take_id();
        self.encoder
            .push_empty(&mut self.out, kind.request_byte(), id);
        id
    }

    /// Queues raw bytes as they are (for tests of the server's error paths).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn pending_out(&self) -> &[u8] {
        &self.out
    }

    pub fn clear_out(&mut self) {
        self.out.clear();
    }

    /// The next complete response in the receive buffer, if any.
    pub fn next_response(&mut self) -> Result<Option<Response>, ClientError> {
        match self.inbuf.front(self.frame_len_max) {
            Scan::Incomplete { .. } => Ok(None),
            Scan::Broken { error, .. } => Err(ClientError::Frame(error)),
            Scan::Frame(at) => {
                let mut payload = AlignedVec::with_capacity(at.header.len as usize);
                payload.extend_from_slice(self.inbuf.payload(&at));
                self.inbuf.consume(at.frame_len);
                Ok(Some(Response {
                    kind: at.header.kind,
                    id: at.header.id,
                    payload,
                }))
            }
        }
    }

    /// Free space to read into.
    pub fn read_space(&mut self) -> &mut [u8] {
        self.inbuf.read_space(self.frame_len_max)
    }

    /// Records that `n` bytes were read into [`Codec::read_space`].
    pub fn filled(&mut self, n: usize) {
        self.inbuf.filled(n);
        self.received += n as u64;
    }
}

/// A blocking client on a std TCP stream, plain or TLS.
pub struct Client {
    stream: Stream,
    codec: Codec,
}

impl Client {
    /// Connects with Nagle off (frames are small and latency matters).
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: Stream::Plain(stream),
            codec: Codec::new(),
        })
    }

    /// Connects and speaks TLS (`tls`: see [`crate::tls::ClientTls`]); the server's
    /// certificate must name `addr`'s host.
    pub fn connect_tls(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<Client, ClientError> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        Ok(Client {
            stream: Stream::tls(tcp, tls, addr)?,
            codec: Codec::new(),
        })
    }

    /// [`Client::connect_tls`] when `tls` is given, else [`Client::connect`].
    pub fn connect_with(
        addr: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Client, ClientError> {
        match tls {
            Some(config) => Client::connect_tls(addr, config),
            None => Client::connect(addr),
        }
    }

    /// Read timeout for `recv`; `None` waits forever.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.tcp().set_read_timeout(timeout)?;
        Ok(())
    }

    pub fn codec(&mut self) -> &mut Codec {
        &mut self.codec
    }

    /// The socket underneath (TLS or not).
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Queues a request (not yet written); returns its id.
    pub fn send<T>(&mut self, kind: Kind, value: &T) -> Result<u64, ClientError>
    where
        T: for<'a, 'b> rkyv::Serialize<PayloadSerializer<'a, 'b>>,
    {
        self.codec.queue(kind, value)
    }

    /// Queues a request with an empty payload; returns its id.
    pub fn send_empty(&mut self, kind: Kind) -> u64 {
        self.codec.queue_empty(kind)
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(self.codec.pending_out())?;
        self.codec.clear_out();
        Ok(())
    }

    /// The next response, in request order.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some(r) = self.codec.next_response()? {
                return Ok(r);
            }
            let n = self.stream.read(self.codec.read_space())?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.codec.filled(n);
        }
    }

    fn call_empty(&mut self, kind: Kind) -> Result<Response, ClientError> {
        let id = self.send_empty(kind);
        self.flush()?;
        self.recv()?.expect(kind, id)
    }

    /// Round trip of a ping.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let t = Instant::now();
        self.call_empty(Kind::Ping)?;
        Ok(t.elapsed())
    }

    pub fn evaluate(&mut self, event: &Event) -> Result<Decision, ClientError> {
        let id = self.send(Kind::Evaluate, event)?;
        self.flush()?;
        self.recv()?.expect(Kind::Evaluate, id)?.decode()
    }

    pub fn evaluate_batch(&mut self, events: Vec<Event>) -> Result<Vec<Decision>, ClientError> {
        let batch = EvaluateBatch { events };
        let id = self.send(Kind::EvaluateBatch, &batch)?;
        self.flush()?;
        let reply: DecisionBatch = self.recv()?.expect(Kind::EvaluateBatch, id)?.decode()?;
        Ok(reply.decisions)
    }

    pub fn stats(&mut self) -> Result<StatsReply, ClientError> {
        self.call_empty(Kind::Stats)?.decode()
    }

    /// Asks the engine to recompile its rules (from `rules_path` on the server, or the path
    /// it serves when empty). Compilation takes as long as it takes: no read timeout applies
    /// beyond the one set on the client.
    pub fn reload(&mut self, rules_path: &str) -> Result<ReloadReply, ClientError> {
        let id = self.send(
            Kind::Reload,
            &ReloadRequest {
                rules_path: rules_path.to_string(),
            },
        )?;
        self.flush()?;
        self.recv()?.expect(Kind::Reload, id)?.decode()
    }

    pub fn topology(&mut self) -> Result<TopologyReply, ClientError> {
        self.call_empty(Kind::Topology)?.decode()
    }

    /// A cluster node's view of the cluster (kind 0x07; error 11 from a lone engine).
    pub fn cluster_topology(&mut self) -> Result<ClusterTopology, ClientError> {
        self.call_empty(Kind::ClusterTopology)?.decode()
    }
}

/// An async pipelined client over any `futures-io` byte stream.
pub struct AsyncClient<S> {
    stream: S,
    codec: Codec,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncClient<S> {
    pub fn new(stream: S) -> AsyncClient<S> {
        AsyncClient {
            stream,
            codec: Codec::new(),
        }
    }

    pub fn codec(&mut self) -> &mut Codec {
        &mut self.codec
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    pub fn send<T>(&mut self, kind: Kind, value: &T) -> Result<u64, ClientError>
    where
        T: for<'a, 'b> rkyv::Serialize<PayloadSerializer<'a, 'b>>,
    {
        self.codec.queue(kind, value)
    }

    pub fn send_empty(&mut self, kind: Kind) -> u64 {
        self.codec.queue_empty(kind)
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(self.codec.pending_out()).await?;
        self.stream.flush().await?;
        self.codec.clear_out();
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some(r) = self.codec.next_response()? {
                return Ok(r);
            }
            let n = self.stream.read(self.codec.read_space()).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.codec.filled(n);
        }
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let id = self.send_empty(Kind::Ping);
        self.flush().await?;
        self.recv().await?.expect(Kind::Ping, id)?;
        Ok(())
    }

    pub async fn evaluate(&mut self, event: &Event) -> Result<Decision, ClientError> {
        let id = self.send(Kind::Evaluate, event)?;
        self.flush().await?;
        self.recv().await?.expect(Kind::Evaluate, id)?.decode()
    }

    pub async fn stats(&mut self) -> Result<StatsReply, ClientError> {
        let id = self.send_empty(Kind::Stats);
        self.flush().await?;
        self.recv().await?.expect(Kind::Stats, id)?.decode()
    }

    pub async fn topology(&mut self) -> Result<TopologyReply, ClientError> {
        let id = self.send_empty(Kind::Topology);
        self.flush().await?;
        self.recv().await?.expect(Kind::Topology, id)?.decode()
    }
}
