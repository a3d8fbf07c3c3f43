//! verdict-load's TLS: a rustls client driven over monoio's owned-buffer I/O (rustls does no
//! I/O itself). One `ClientConnection` per connection, shared by the open loop's writer and
//! reader halves through a `RefCell` (one thread; no borrow is held across an await).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use rustls::{ClientConfig, ClientConnection};

/// Ciphertext read per socket read: one TLS record and its header.
const CIPHER_CHUNK_BYTES: usize = 16 * 1024 + 512;

pub struct TlsClient {
    conn: RefCell<ClientConnection>,
    /// Ciphertext read and not yet taken by rustls: `buf[start..]` (the reader's alone).
    incoming: RefCell<Incoming>,
}

#[derive(Default)]
struct Incoming {
    buf: Vec<u8>,
    start: usize,
}

impl TlsClient {
    /// Shakes hands over `stream` for `addr`'s host.
    pub async fn connect<S: AsyncReadRent + AsyncWriteRent>(
        stream: &mut S,
        config: Arc<ClientConfig>,
        addr: &str,
    ) -> io::Result<Rc<TlsClient>> {
        let name = verdict_net::tls::server_name(addr)?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let tls = Rc::new(TlsClient {
            conn: RefCell::new(conn),
            incoming: RefCell::new(Incoming::default()),
        });
        loop {
            let (handshaking, wants_write) = {
                let c = tls.conn.borrow();
                (c.is_handshaking(), c.wants_write())
            };
            if wants_write {
                tls.flush(stream).await?;
            } else if !handshaking {
                return Ok(tls);
            } else if !tls.feed(stream).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends every byte of ciphertext rustls has ready.
    pub async fn flush<W: AsyncWriteRent>(&self, w: &mut W) -> io::Result<()> {
        loop {
            let mut out = Vec::new();
            {
                let mut c = self.conn.borrow_mut();
                if !c.wants_write() {
                    return Ok(());
                }
                c.write_tls(&mut out)?;
            }
            let (res, _) = w.write_all(out).await;
            res?;
        }
    }

    /// Gives rustls one more piece of ciphertext (what is left of the last socket read, else
    /// a new read) and lets it process it; false at the end of the stream. One piece per
    /// call: rustls refuses ciphertext while its decrypted plaintext waits to be read.
    async fn feed<R: AsyncReadRent>(&self, r: &mut R) -> io::Result<bool> {
        let empty = {
            let i = self.incoming.borrow();
            i.start == i.buf.len()
        };
        if empty {
            let mut buf = std::mem::take(&mut self.incoming.borrow_mut().buf);
            buf.clear();
            if buf.capacity() < CIPHER_CHUNK_BYTES {
                buf.reserve(CIPHER_CHUNK_BYTES);
            }
            let (res, buf) = r.read(buf).await;
            let n = res?;
            *self.incoming.borrow_mut() = Incoming { buf, start: 0 };
            if n == 0 {
                return Ok(false);
            }
        }
        let mut i = self.incoming.borrow_mut();
        let mut c = self.conn.borrow_mut();
        let start = i.start;
        let mut rest = &i.buf[start..];
        let taken = c.read_tls(&mut rest)?;
        i.start += taken;
        c.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(true)
    }

    /// Encrypts `plain` and writes it all.
    pub async fn write<W: AsyncWriteRent>(&self, w: &mut W, plain: &[u8]) -> io::Result<()> {
        let mut rest = plain;
        while !rest.is_empty() {
            let n = self.conn.borrow_mut().writer().write(rest)?;
            rest = &rest[n..];
            self.flush(w).await?;
        }
        Ok(())
    }

    /// Appends all the plaintext rustls has (reading ciphertext until there is some) to
    /// `plain`: how many bytes, 0 at the end of the stream.
    pub async fn read<R: AsyncReadRent>(
        &self,
        r: &mut R,
        plain: &mut Vec<u8>,
    ) -> io::Result<usize> {
        loop {
            let mut got = 0;
            {
                let mut c = self.conn.borrow_mut();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    match c.reader().read(&mut chunk) {
                        Ok(0) if got == 0 => return Ok(0),
                        Ok(0) => break,
                        Ok(n) => {
                            plain.extend_from_slice(&chunk[..n]);
                            got += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            if got > 0 {
                return Ok(got);
            }
            if !self.feed(r).await? {
                return Ok(0);
            }
        }
    }
}
