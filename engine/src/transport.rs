//! A data-port connection's bytes: plain TCP, or TLS over it (rustls, sans-I/O: it never
//! touches the socket; this module moves ciphertext between the socket and rustls on the
//! shard's own executor, so a handshake waits like any read and blocks no other connection).
//!
//! The connection loop above reads plaintext into its receive buffer and writes plaintext
//! responses; whether they were encrypted is this module's business alone.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

/// Ciphertext read from the socket per read: one full TLS record and its header.
const TLS_READ_CHUNK_BYTES: usize = 16 * 1024 + 512;
/// Ciphertext buffer a TLS connection keeps between writes (one full record); a larger
/// answer's is given back once written.
const OUTGOING_KEPT_BYTES: usize = 16 * 1024 + 512;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

pub struct Tls {
    stream: TcpStream,
    conn: ServerConnection,
    /// Ciphertext from the socket; `incoming[start..end]` is not yet taken by rustls.
    incoming: Box<[u8]>,
    start: usize,
    end: usize,
    /// Ciphertext rustls produced, on its way to the socket: `outgoing[sent..]` is not
    /// written yet. Kept across a cancelled flush, so no record is ever cut short.
    outgoing: Vec<u8>,
    sent: usize,
}

/// Why a TLS connection could not be set up.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer does not speak TLS, or spoke it wrong (a plaintext client on a TLS port, no
    /// client certificate where one is required, ...).
    Tls(rustls::Error),
    /// The handshake did not finish within its deadline.
    TimedOut,
    Io(io::Error),
}

impl Transport {
    /// Plain bytes, or TLS with `config` once the handshake (bounded by `deadline`) is done.
    pub async fn accept(
        stream: TcpStream,
        config: Option<Arc<ServerConfig>>,
        deadline: Instant,
    ) -> Result<Transport, (HandshakeError, Option<TcpStream>)> {
        let Some(config) = config else {
            return Ok(Transport::Plain(stream));
        };
        let conn = match ServerConnection::new(config) {
            Ok(conn) => conn,
            Err(e) => return Err((HandshakeError::Tls(e), Some(stream))),
        };
        let mut tls = Box::new(Tls {
            stream,
            conn,
            incoming: vec![0; TLS_READ_CHUNK_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            outgoing: Vec::new(),
            sent: 0,
        });
        let left = deadline.saturating_duration_since(Instant::now());
        let done = glommio::timer::timeout(left, async { Ok(tls.handshake().await) }).await;
        match done {
            Ok(Ok(())) => Ok(Transport::Tls(tls)),
            Ok(Err(e)) => Err((e, Some(tls.stream))),
            Err(_) => Err((HandshakeError::TimedOut, Some(tls.stream))),
        }
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.stream,
        }
    }

    /// Reads plaintext into `buf`; 0 at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf).await,
            Transport::Tls(t) => t.read(buf).await,
        }
    }

    /// Writes all of `bytes` (encrypted, under TLS).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.write_all(bytes).await,
            Transport::Tls(t) => t.write_all(bytes).await,
        }
    }

    /// Ends our sending side (after a TLS close_notify).
    pub async fn shutdown_write(&mut self) {
        if let Transport::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush().await;
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write).await;
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        let _ = self.tcp().set_write_timeout(timeout);
    }
}

impl Tls {
    /// The socket, TLS state dropped (for discarding what the peer still sends).
    pub fn into_tcp(self: Box<Self>) -> TcpStream {
        self.stream
    }

    async fn handshake(&mut self) -> Result<(), HandshakeError> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush().await.map_err(HandshakeError::Io)?;
                continue;
            }
            match self.feed().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Err(e) => return Err(e),
            }
        }
        // The server's last flight (and session tickets) go out before the first read.
        self.flush().await.map_err(HandshakeError::Io)
    }

    /// Gives rustls more ciphertext (from what is buffered, else from the socket) and lets
    /// it process it; false at the end of the stream. A protocol error sends rustls' alert
    /// before it returns.
    async fn feed(&mut self) -> Result<bool, HandshakeError> {
        if self.start == self.end {
            let n = self
                .stream
                .read(&mut self.incoming)
                .await
                .map_err(HandshakeError::Io)?;
            if n == 0 {
                return Ok(false);
            }
            (self.start, self.end) = (0, n);
        }
        let mut pending = &self.incoming[self.start..self.end];
        let taken = self
            .conn
            .read_tls(&mut pending)
            .map_err(HandshakeError::Io)?;
        self.start += taken;
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.flush().await;
            return Err(HandshakeError::Tls(e));
        }
        Ok(true)
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.feed().await {
                Ok(true) => {}
                // The peer closed without close_notify: the end, all the same.
                Ok(false) => return Ok(0),
                Err(HandshakeError::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}"))),
            }
            if self.conn.wants_write() {
                self.flush().await?;
            }
        }
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // rustls buffers a bounded amount of plaintext: take what it accepts, send it.
            let n = self.conn.writer().write(bytes)?;
            bytes = &bytes[n..];
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends every byte of ciphertext rustls has ready. Safe to cancel: what was handed to
    /// the socket is remembered write by write, and the next flush finishes the rest first.
    async fn flush(&mut self) -> io::Result<()> {
        loop {
            while self.sent < self.outgoing.len() {
                let n = self.stream.write(&self.outgoing[self.sent..]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.sent += n;
            }
            self.outgoing.clear();
            self.sent = 0;
            if self.outgoing.capacity() > OUTGOING_KEPT_BYTES {
                // A large answer's ciphertext is not kept for an idle connection.
                self.outgoing.shrink_to(OUTGOING_KEPT_BYTES);
            }
            if !self.conn.wants_write() {
                return Ok(());
            }
            self.conn.write_tls(&mut self.outgoing)?;
        }
    }
}
