//! The frame codec: a 16-byte header and a payload padded with zeros to a multiple of 16.
//!
//! ```text
//! bytes  0..2   magic   0x56 0x44 ("VD")
//! byte   2      version 1
//! byte   3      kind    request 0x01..0x7F; response = request | 0x80; 0xFF = error
//! bytes  4..8   len     u32 LE, payload length before padding
//! bytes  8..16  id      u64 LE, chosen by the client, echoed in the response
//! ```
//!
//! Everything here is pure: it reads and writes byte slices and never does I/O. Because every
//! frame length is a multiple of 16, a receive buffer that starts 16-aligned keeps every
//! payload 16-aligned, so rkyv can validate it in place without a copy.

use rkyv::{
    Serialize,
    api::high::{HighSerializer, to_bytes_in_with_alloc},
    ser::{Positional, Writer, allocator::Arena, allocator::ArenaHandle},
    util::AlignedVec,
};

/// The two magic bytes that open every frame: "VD".
pub const MAGIC: [u8; 2] = [0x56, 0x44];
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Header length in bytes; also the alignment of every frame.
pub const HEADER_LEN: usize = 16;
/// Alignment of every frame start and every payload, in bytes.
pub const FRAME_ALIGN: usize = 16;
/// Default ceiling on a payload's length (before padding), in bytes. Servers configure their
/// own (`limits.frame_len_max_bytes`); clients use this one for responses.
pub const FRAME_LEN_MAX_DEFAULT_BYTES: u32 = 1 << 20;

/// A request or response kind: byte 3 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Round trip; empty payload both ways.
    Ping = 0x01,
    /// One archived `Event` in, one archived `Decision` out.
    Evaluate = 0x02,
    /// One archived `EvaluateBatch` in, one archived `DecisionBatch` out.
    EvaluateBatch = 0x03,
    /// Empty payload in, archived `StatsReply` out.
    Stats = 0x04,
    /// Empty payload in, archived `TopologyReply` out.
    Topology = 0x05,
    /// Archived `ReloadRequest` in, archived `ReloadReply` out: recompile the rule set from
    /// disk and publish it as the next epoch.
    Reload = 0x06,
    /// Empty payload in, archived `ClusterTopology` out: every node of a cluster and which
    /// node and shard owns each partition. Error 11 from an engine that is no cluster node.
    ClusterTopology = 0x07,
    /// Node to node, in a cluster: archived `EvaluateBatch` in (events whose accounts the
    /// receiving node owns), archived `PeerDecided` out. Refused (error 11) by an engine
    /// that is not a cluster node.
    PeerDecide = 0x10,
    /// Node to node: archived `PeerRecord` in, archived `PeerRecorded` out. Refused
    /// (error 11) by an engine that is not a cluster node.
    PeerRecord = 0x11,
}

impl Kind {
    /// The request kind for a header byte, if it names one.
    pub fn from_request_byte(byte: u8) -> Option<Kind> {
        match byte {
            0x01 => Some(Kind::Ping),
            0x02 => Some(Kind::Evaluate),
            0x03 => Some(Kind::EvaluateBatch),
            0x04 => Some(Kind::Stats),
            0x05 => Some(Kind::Topology),
            0x06 => Some(Kind::Reload),
            0x07 => Some(Kind::ClusterTopology),
            0x10 => Some(Kind::PeerDecide),
            0x11 => Some(Kind::PeerRecord),
            _ => None,
        }
    }

    /// The byte a request of this kind carries.
    pub fn request_byte(self) -> u8 {
        self as u8
    }

    /// The byte the response to a request of this kind carries.
    pub fn response_byte(self) -> u8 {
        self as u8 | RESPONSE_BIT
    }

    /// Whether this request carries an empty payload.
    pub fn payload_is_empty(self) -> bool {
        matches!(
            self,
            Kind::Ping | Kind::Stats | Kind::Topology | Kind::ClusterTopology
        )
    }
}

/// Set on a response's kind byte.
pub const RESPONSE_BIT: u8 = 0x80;
/// The kind byte of an error response.
pub const KIND_ERROR: u8 = 0xFF;

/// A parsed header. `kind` is the raw byte: unknown kinds are a per-request error, not a
/// framing error, so the parser does not judge them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: u8,
    pub len: u32,
    pub id: u64,
}

impl Header {
    /// The payload length rounded up to the frame alignment.
    pub fn padded_len(&self) -> usize {
        padded(self.len as usize)
    }

    /// The whole frame's length: header plus padded payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.padded_len()
    }
}

/// `len` rounded up to a multiple of [`FRAME_ALIGN`].
pub fn padded(len: usize) -> usize {
    len.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// Why a byte stream can no longer be read as frames. Each is followed by closing the
/// connection: after any of them the next frame boundary is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {found:02x?}: expected 56 44 (\"VD\")")]
    BadMagic { found: [u8; 2] },
    #[error("unsupported protocol version {found}: this server speaks version {VERSION}")]
    BadVersion { found: u8 },
    #[error("payload length {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
}

/// Parses the 16 header bytes, checking magic, version and the length limit before anything
/// sizes a buffer from `len`. The id is returned with the error so the server can echo it.
pub fn parse_header(bytes: &[u8; HEADER_LEN], len_max: u32) -> Result<Header, (u64, FrameError)> {
    let id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if bytes[0..2] != MAGIC {
        return Err((
            id,
            FrameError::BadMagic {
                found: [bytes[0], bytes[1]],
            },
        ));
    }
    if bytes[2] != VERSION {
        return Err((id, FrameError::BadVersion { found: bytes[2] }));
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len > len_max {
        return Err((id, FrameError::TooLarge { len, max: len_max }));
    }
    Ok(Header {
        version: bytes[2],
        kind: bytes[3],
        len,
        id,
    })
}

/// Encodes a header.
pub fn encode_header(kind: u8, len: u32, id: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    out[3] = kind;
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&id.to_le_bytes());
    out
}

/// One complete frame found at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAt {
    pub header: Header,
    /// Offset of the payload in the buffer that was scanned.
    pub payload_start: usize,
    /// Bytes the whole frame (header + padded payload) occupies.
    pub frame_len: usize,
}

/// What is at the front of `buf`: a complete frame, not enough bytes yet (with how many the
/// next step needs in total), or a framing error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Frame(FrameAt),
    /// `need` bytes in total must be buffered before the frame is complete.
    Incomplete {
        need: usize,
    },
    Broken {
        id: u64,
        error: FrameError,
    },
}

/// Looks at the front of `buf` for one frame. Pure; `buf` must start on a frame boundary.
pub fn scan(buf: &[u8], len_max: u32) -> Scan {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Scan::Incomplete { need: HEADER_LEN };
    };
    match parse_header(head, len_max) {
        Err((id, error)) => Scan::Broken { id, error },
        Ok(header) => {
            let frame_len = header.frame_len();
            if buf.len() < frame_len {
                Scan::Incomplete { need: frame_len }
            } else {
                Scan::Frame(FrameAt {
                    header,
                    payload_start: HEADER_LEN,
                    frame_len,
                })
            }
        }
    }
}

/// A receive buffer that keeps frames 16-aligned: `start..end` holds unconsumed bytes and
/// `start` is always a frame boundary, so every payload in it starts on a 16-byte boundary
/// and can be validated in place. It grows only to fit a frame whose header passed the
/// length limit, and shrinks back once empty.
pub struct RecvBuffer {
    buf: AlignedVec<FRAME_ALIGN>,
    start: usize,
    end: usize,
    base_len: usize,
}

impl RecvBuffer {
    /// A buffer of `bytes` (rounded up to 16).
    pub fn new(bytes: usize) -> RecvBuffer {
        let base_len = padded(bytes.max(HEADER_LEN));
        let mut buf = AlignedVec::with_capacity(base_len);
        buf.resize(base_len, 0);
        RecvBuffer {
            buf,
            start: 0,
            end: 0,
            base_len,
        }
    }

    /// What is at the front of the unconsumed bytes.
    pub fn front(&self, len_max: u32) -> Scan {
        scan(&self.buf[self.start..self.end], len_max)
    }

    /// What is `offset` bytes past the front (a frame boundary, e.g. the sum of the frames
    /// before it): a batch can look at several whole frames before consuming any. A frame's
    /// `payload_start` counts from the front, so [`RecvBuffer::payload`] reads it.
    pub fn at(&self, offset: usize, len_max: u32) -> Scan {
        match scan(&self.buf[self.start + offset..self.end], len_max) {
            Scan::Frame(at) => Scan::Frame(FrameAt {
                payload_start: offset + at.payload_start,
                ..at
            }),
            other => other,
        }
    }

    /// The payload of a frame returned by [`RecvBuffer::front`] or [`RecvBuffer::at`].
    pub fn payload(&self, at: &FrameAt) -> &[u8] {
        let p = self.start + at.payload_start;
        &self.buf[p..p + at.header.len as usize]
    }

    /// Drops a frame of `frame_len` bytes from the front.
    pub fn consume(&mut self, frame_len: usize) {
        debug_assert!(self.start + frame_len <= self.end);
        self.start += frame_len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > self.base_len {
                // Give the memory of a large frame back, not just the length.
                self.buf.resize(self.base_len, 0);
                self.buf.shrink_to_fit();
            }
        }
    }

    /// Unconsumed bytes.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The buffer's size now, bytes (its base, or more while a large frame is arriving).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Never empty: a receive buffer always has its base size.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The id in the header at the front, once its 16 bytes are in (for an error answer to a
    /// frame that cannot be read whole).
    pub fn front_id(&self) -> Option<u64> {
        let head = self.buf[self.start..self.end].first_chunk::<HEADER_LEN>()?;
        Some(u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")))
    }

    /// The size the buffer starts with and shrinks back to, bytes.
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// The size [`RecvBuffer::read_space`] would give the buffer (it grows only when an
    /// incomplete frame no longer fits), so a caller can check a budget before it grows.
    pub fn len_for_read(&self, len_max: u32) -> usize {
        let need = match self.front(len_max) {
            Scan::Incomplete { need } => need,
            _ => 0,
        };
        let compacts =
            self.start > 0 && (self.end == self.buf.len() || self.start + need > self.buf.len());
        let end = if compacts {
            self.end - self.start
        } else {
            self.end
        };
        if end == self.buf.len() && need > self.buf.len() {
            (self.buf.len() * 2).min(need)
        } else {
            self.buf.len()
        }
    }

    /// Free space to read into, after compacting. When the buffer is full and the frame at
    /// the front (whose header passed `len_max`) is still incomplete, it grows by doubling,
    /// capped at that frame's length: memory follows the bytes that actually arrived (at
    /// most twice that), never a length a peer merely announced.
    pub fn read_space(&mut self, len_max: u32) -> &mut [u8] {
        let need = match self.front(len_max) {
            Scan::Incomplete { need } => need,
            _ => 0,
        };
        if self.start > 0 && (self.end == self.buf.len() || self.start + need > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && need > self.buf.len() {
            let grown = (self.buf.len() * 2).min(need);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`RecvBuffer::read_space`].
    pub fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.buf.len(), "filled past the read space");
        self.end += n;
    }

    /// Appends whole frames that `write` encodes at the end of `out` (a server that
    /// translates another protocol into frames feeds its request pipeline this way). The
    /// buffer grows to fit them and shrinks back once they are consumed, as after a large
    /// read. `write` must leave `out` holding whole frames.
    pub fn append_with<R>(&mut self, write: impl FnOnce(&mut AlignedVec<FRAME_ALIGN>) -> R) -> R {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.resize(self.end, 0);
        let result = write(&mut self.buf);
        debug_assert_eq!(self.buf.len() % FRAME_ALIGN, 0, "frames are whole");
        self.end = self.buf.len();
        if self.buf.len() < self.base_len {
            self.buf.resize(self.base_len, 0);
        }
        result
    }
}

/// An rkyv writer that appends to an [`AlignedVec`] but counts positions from `start`, so a
/// payload serialized after a header is laid out exactly as if it began at offset 0.
pub struct PayloadWriter<'a> {
    buf: &'a mut AlignedVec<FRAME_ALIGN>,
    start: usize,
}

impl Positional for PayloadWriter<'_> {
    fn pos(&self) -> usize {
        self.buf.len() - self.start
    }
}

impl<E> Writer<E> for PayloadWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// The serializer used for payloads: appends into the output buffer, scratch space from a
/// reused arena. Serialization failures carry no message (they cannot happen for values
/// within the documented limits).
pub type PayloadSerializer<'a, 'b> =
    HighSerializer<PayloadWriter<'a>, ArenaHandle<'b>, rkyv::rancor::Failure>;

/// Appends whole frames to an aligned output buffer. Reuses its scratch arena, so after the
/// first few frames encoding allocates nothing unless the output buffer must grow.
pub struct FrameEncoder {
    arena: Arena,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

/// A value could not be serialized into a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload could not be serialized")]
pub struct EncodeError;

impl FrameEncoder {
    pub fn new() -> Self {
        FrameEncoder {
            arena: Arena::new(),
        }
    }

    /// Appends a frame whose payload is the archive of `value`. `out` must hold whole frames
    /// (its length a multiple of 16). On error `out` is left as it was.
    pub fn push<T>(
        &mut self,
        out: &mut AlignedVec<FRAME_ALIGN>,
        kind: u8,
        id: u64,
        value: &T,
    ) -> Result<(), EncodeError>
    where
        T: for<'a, 'b> Serialize<PayloadSerializer<'a, 'b>>,
    {
        debug_assert_eq!(out.len() % FRAME_ALIGN, 0, "output must hold whole frames");
        let frame_start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        let start = out.len();
        let writer = PayloadWriter {
            buf: &mut *out,
            start,
        };
        let result = to_bytes_in_with_alloc::<_, _, rkyv::rancor::Failure>(
            value,
            writer,
            self.arena.acquire(),
        );
        if result.is_err() {
            // SAFETY: shrinking to a previous length of initialized bytes.
            unsafe { out.set_len(frame_start) };
            return Err(EncodeError);
        }
        let len = out.len() - start;
        let pad = padded(len) - len;
        out.extend_from_slice(&[0u8; FRAME_ALIGN][..pad]);
        let header = encode_header(kind, len as u32, id);
        out[frame_start..start].copy_from_slice(&header);
        Ok(())
    }

    /// Appends a frame with an empty payload.
    pub fn push_empty(&mut self, out: &mut AlignedVec<FRAME_ALIGN>, kind: u8, id: u64) {
        out.extend_from_slice(&encode_header(kind, 0, id));
    }
}

/// Encodes one frame into a fresh buffer (clients and tests; servers use [`FrameEncoder`]).
pub fn encode_frame<T>(kind: u8, id: u64, value: &T) -> Result<AlignedVec<FRAME_ALIGN>, EncodeError>
where
    T: for<'a, 'b> Serialize<PayloadSerializer<'a, 'b>>,
{
    let mut out = AlignedVec::new();
    FrameEncoder::new().push(&mut out, kind, id, value)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, len: u32, id: u64) -> Vec<u8> {
        let mut v = encode_header(kind, len, id).to_vec();
        v.resize(HEADER_LEN + padded(len as usize), 0);
        v
    }

    #[test]
    fn header_round_trips() {
        let bytes = encode_header(0x02, 300, 0xDEAD_BEEF_0102_0304);
        let h = parse_header(&bytes, 1 << 20).unwrap();
        assert_eq!(
            h,
            Header {
                version: 1,
                kind: 0x02,
                len: 300,
                id: 0xDEAD_BEEF_0102_0304
            }
        );
        assert_eq!(h.padded_len(), 304);
        assert_eq!(h.frame_len(), 320);
    }

    #[test]
    fn padding_rounds_to_sixteen() {
        assert_eq!(padded(0), 0);
        assert_eq!(padded(1), 16);
        assert_eq!(padded(16), 16);
        assert_eq!(padded(17), 32);
    }

    #[test]
    fn bad_magic_is_broken_and_keeps_the_id() {
        let mut f = frame(0x01, 0, 7);
        f[0] = b'X';
        assert_eq!(
            scan(&f, 1024),
            Scan::Broken {
                id: 7,
                error: FrameError::BadMagic {
                    found: [b'X', 0x44]
                }
            }
        );
    }

    #[test]
    fn wrong_version_is_broken() {
        let mut f = frame(0x01, 0, 9);
        f[2] = 2;
        assert_eq!(
            scan(&f, 1024),
            Scan::Broken {
                id: 9,
                error: FrameError::BadVersion { found: 2 }
            }
        );
    }

    #[test]
    fn oversized_is_broken_before_the_payload_arrives() {
        // Only the header is present: the limit is judged from it alone.
        let f = encode_header(0x02, 5000, 3);
        assert_eq!(
            scan(&f, 4096),
            Scan::Broken {
                id: 3,
                error: FrameError::TooLarge {
                    len: 5000,
                    max: 4096
                }
            }
        );
    }

    #[test]
    fn truncated_frames_ask_for_the_rest() {
        let f = frame(0x02, 20, 1);
        for cut in 0..f.len() {
            let expect = if cut < HEADER_LEN { HEADER_LEN } else { 48 };
            assert_eq!(
                scan(&f[..cut], 1024),
                Scan::Incomplete { need: expect },
                "cut at {cut}"
            );
        }
        assert!(matches!(
            scan(&f, 1024),
            Scan::Frame(FrameAt { frame_len: 48, .. })
        ));
    }

    #[test]
    fn unknown_kinds_are_not_a_framing_error() {
        let f = frame(0x66, 0, 5);
        let Scan::Frame(at) = scan(&f, 1024) else {
            panic!("expected a frame")
        };
        assert_eq!(at.header.kind, 0x66);
        assert_eq!(Kind::from_request_byte(0x66), None);
        assert_eq!(
            Kind::from_request_byte(0x82),
            None,
            "a response kind is not a request"
        );
    }

    #[test]
    fn a_sender_that_skips_padding_loses_framing_at_the_next_header() {
        // A 20-byte payload sent without its 12 padding bytes: the next header is read
        // 12 bytes early, so the stream is judged broken rather than misread.
        let mut stream = encode_header(0x02, 20, 1).to_vec();
        stream.extend_from_slice(&[7u8; 20]);
        stream.extend_from_slice(&encode_header(0x01, 0, 2));
        stream.extend_from_slice(&[0u8; 12]);
        let Scan::Frame(first) = scan(&stream, 1024) else {
            panic!()
        };
        assert_eq!(first.frame_len, 48);
        assert!(matches!(
            scan(&stream[first.frame_len..], 1024),
            Scan::Broken { .. }
        ));
    }

    #[test]
    fn archives_off_their_alignment_fail_validation_instead_of_being_misread() {
        let mut out = AlignedVec::<FRAME_ALIGN>::new();
        FrameEncoder::new()
            .push(&mut out, 0x82, 1, &(1u64, 2u32))
            .unwrap();
        let payload = &out[HEADER_LEN..HEADER_LEN + 16];
        type Pair = rkyv::tuple::ArchivedTuple2<rkyv::rend::u64_le, rkyv::rend::u32_le>;
        assert!(rkyv::access::<Pair, rkyv::rancor::Error>(payload).is_ok());
        let mut shifted = AlignedVec::<FRAME_ALIGN>::new();
        shifted.extend_from_slice(&[0]);
        shifted.extend_from_slice(payload);
        assert!(rkyv::access::<Pair, rkyv::rancor::Error>(&shifted[1..]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut buf = vec![0u8; 256];
        for _ in 0..100_000 {
            let n = rng.usize(0..buf.len());
            rng.fill(&mut buf[..n]);
            if rng.bool() {
                buf[0..2].copy_from_slice(&MAGIC);
                buf[2] = VERSION;
            }
            let _ = scan(&buf[..n], 128);
        }
    }

    #[test]
    fn recv_buffer_reassembles_frames_fed_a_byte_at_a_time() {
        let mut stream = AlignedVec::<FRAME_ALIGN>::new();
        let mut enc = FrameEncoder::new();
        for i in 0..5u64 {
            enc.push(&mut stream, 0x82, i, &"x".repeat(40 * i as usize))
                .unwrap();
        }
        // A small buffer forces both compaction and growth.
        let mut rb = RecvBuffer::new(32);
        let mut got = Vec::new();
        for &byte in stream.iter() {
            // The size announced before reading is the size reading takes.
            let announced = rb.len_for_read(1024);
            rb.read_space(1024);
            assert_eq!(rb.len(), announced);
            let space = rb.read_space(1024);
            space[0] = byte;
            rb.filled(1);
            while let Scan::Frame(at) = rb.front(1024) {
                let payload = rb.payload(&at);
                assert_eq!(
                    payload.as_ptr() as usize % FRAME_ALIGN,
                    0,
                    "payload aligned"
                );
                let s = rkyv::access::<rkyv::string::ArchivedString, rkyv::rancor::Error>(payload)
                    .unwrap();
                got.push((at.header.id, s.len()));
                rb.consume(at.frame_len);
            }
        }
        assert_eq!(got, vec![(0, 0), (1, 40), (2, 80), (3, 120), (4, 160)]);
        assert_eq!(rb.buffered(), 0);
    }

    #[test]
    fn an_announced_length_alone_does_not_grow_the_buffer() {
        let mut rb = RecvBuffer::new(4096);
        let header = encode_header(0x02, 1 << 20, 1);
        rb.read_space(1 << 20)[..16].copy_from_slice(&header);
        rb.filled(16);
        // 16 bytes in: the space offered is what is left of the base buffer, not 1 MiB.
        assert_eq!(rb.read_space(1 << 20).len(), 4096 - 16);
        // Feed the frame; the buffer grows with what arrives, at most doubling each time.
        let mut fed = 16;
        while fed < HEADER_LEN + (1 << 20) {
            let announced = rb.len_for_read(1 << 20);
            rb.read_space(1 << 20);
            assert_eq!(rb.buf.len(), announced);
            let space = rb.read_space(1 << 20);
            let before = fed;
            let n = space.len().min(HEADER_LEN + (1 << 20) - fed);
            fed += n;
            rb.filled(n);
            assert!(
                rb.buf.len() <= 2 * before.max(4096),
                "{} for {before} bytes",
                rb.buf.len()
            );
        }
        let Scan::Frame(at) = rb.front(1 << 20) else {
            panic!("frame complete")
        };
        rb.consume(at.frame_len);
        assert_eq!(rb.buf.len(), 4096);
        assert!(
            rb.buf.capacity() < 64 * 1024,
            "memory given back: {}",
            rb.buf.capacity()
        );
    }

    #[test]
    fn encoder_pads_and_aligns_every_frame() {
        let mut out = AlignedVec::new();
        let mut enc = FrameEncoder::new();
        enc.push(
            &mut out,
            0x82,
            1,
            &String::from("a string longer than the inline size"),
        )
        .unwrap();
        enc.push_empty(&mut out, 0x81, 2);
        enc.push(&mut out, 0x82, 3, &42u64).unwrap();
        assert_eq!(out.len() % 16, 0);
        let Scan::Frame(first) = scan(&out, 1024) else {
            panic!()
        };
        let p = &out[first.payload_start..first.payload_start + first.header.len as usize];
        let s = rkyv::access::<rkyv::string::ArchivedString, rkyv::rancor::Error>(p).unwrap();
        assert_eq!(s.as_str(), "a string longer than the inline size");
        let rest = &out[first.frame_len..];
        let Scan::Frame(second) = scan(rest, 1024) else {
            panic!()
        };
        assert_eq!(
            (second.header.kind, second.header.len, second.header.id),
            (0x81, 0, 2)
        );
        let rest = &rest[second.frame_len..];
        let Scan::Frame(third) = scan(rest, 1024) else {
            panic!()
        };
        assert_eq!(third.header.id, 3);
        assert_eq!(rest.len(), third.frame_len);
    }

    #[test]
    fn appended_frames_follow_the_unconsumed_ones_and_the_buffer_shrinks_back() {
        let mut rb = RecvBuffer::new(64);
        rb.read_space(1 << 20)[..16].copy_from_slice(&frame(0x04, 0, 1));
        rb.filled(16);
        let mut enc = FrameEncoder::new();
        rb.append_with(|out| enc.push(out, 0x02, 2, &vec![7u8; 200]).unwrap());
        rb.append_with(|out| enc.push_empty(out, 0x05, 3));
        let mut ids = Vec::new();
        while let Scan::Frame(at) = rb.front(1 << 20) {
            ids.push(at.header.id);
            if at.header.id == 2 {
                let v = rkyv::access::<rkyv::vec::ArchivedVec<u8>, rkyv::rancor::Error>(
                    rb.payload(&at),
                )
                .unwrap();
                assert_eq!(v.len(), 200);
            }
            rb.consume(at.frame_len);
        }
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(rb.buffered(), 0);
        assert_eq!(
            rb.len(),
            rb.base_len(),
            "grown past its base, then given back"
        );
    }
}
