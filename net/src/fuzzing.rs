//! The body of each fuzz target (`net/fuzz/fuzz_targets/<name>.rs` calls `fuzzing::<name>`)
//! and of the corpus replay test (`tests/fuzz_corpus.rs` runs every file under
//! `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through the same function). Not an
//! API: each function takes arbitrary bytes, drives the real code path, and panics when a
//! property that must hold for any input does not.
//!
//! - [`frame`]: the scanner and the receive buffer. Input: a limit selector byte, a split
//!   selector byte, then a byte stream. Every frame found re-encodes to its own header, is
//!   within the limit, and the [`RecvBuffer`] fed the stream in arbitrary reads finds exactly
//!   the frames (and the same framing error) a scan of the whole stream does, never holding
//!   more than one largest frame allows, never offering an empty read while a frame is
//!   incomplete. Each frame's payload then goes through [`payload`]'s checks for its kind.
//! - [`payload`]: a kind byte (the request or response kind the payload travels with), then
//!   a payload, validated from a 16-aligned copy as the server and client do. The two error
//!   flavours the server uses (`Failure` to decide, `Error` to explain) agree; a payload that
//!   validates decodes, and its re-encoding is stable; an event's field checks give the same
//!   answer on the re-encoded archive, and an event that passes them survives the JSON form.
//! - [`json_event`]: a JSON line. An event that parses re-serializes to JSON that parses to
//!   the same event, and encodes to an archive that validates and decodes to it again.
//!
//! [`replay`] runs a crate's committed corpus and regressions through its bodies: every
//! crate's `tests/fuzz_corpus.rs` uses it (they all depend on this crate).

use rkyv::{
    Archive, Deserialize, Serialize,
    api::high::{HighDeserializer, HighValidator},
    bytecheck::CheckBytes,
    rancor::{Error, Failure},
    util::AlignedVec,
};

use crate::frame::{
    FRAME_ALIGN, FRAME_LEN_MAX_DEFAULT_BYTES, FrameAt, FrameError, HEADER_LEN, Kind, MAGIC,
    PayloadSerializer, RESPONSE_BIT, RecvBuffer, Scan, VERSION, encode_frame, encode_header,
    padded, parse_header, scan,
};
use crate::json::{event_from_json, event_to_json};
use crate::schema::*;
use crate::validate::validate_event;

/// The length limits [`frame`] scans with, picked by its first byte: none at all, one block,
/// an odd size, a small server, the default, and the largest a header can state.
const FRAME_LEN_MAX_CHOICES: [u32; 6] = [0, 16, 100, 4096, FRAME_LEN_MAX_DEFAULT_BYTES, u32::MAX];

/// Receive buffer sizes [`frame`] starts from (forcing compaction and growth when small).
const RECV_BUFFER_BYTES_CHOICES: [usize; 4] = [16, 48, 256, 4096];

/// Input layout of [`frame`]: `[limit selector, split selector, stream...]`.
pub const FRAME_PREFIX_LEN: usize = 2;

/// Fuzz target `frame`: the scanner over a whole stream, then a [`RecvBuffer`] fed the same
/// stream in reads of sizes drawn from the split selector.
pub fn frame(data: &[u8]) {
    let Some((&[limit, split], stream)) = data.split_first_chunk::<FRAME_PREFIX_LEN>() else {
        return;
    };
    let len_max = FRAME_LEN_MAX_CHOICES[usize::from(limit) % FRAME_LEN_MAX_CHOICES.len()];
    let walked = walk(stream, len_max);
    for (offset, at) in &walked.frames {
        let bytes = &stream[offset + at.payload_start..][..at.header.len as usize];
        payload(&[&[at.header.kind], bytes].concat());
    }
    receive_in_pieces(stream, len_max, split, &walked);
}

/// Fuzz target `payload`: `[kind, payload...]`, validated as the peer that receives that
/// kind would.
pub fn payload(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let evaluate = Kind::Evaluate.request_byte();
    let batch = Kind::EvaluateBatch.request_byte();
    let reload = Kind::Reload.request_byte();
    match kind {
        k if k == evaluate => {
            if let Some((archived, owned)) = round_trip::<Event>(kind, payload) {
                event_checks(&archived, &owned);
            }
        }
        k if k == batch => {
            if let Some((archived, owned)) = round_trip::<EvaluateBatch>(kind, payload) {
                let archived = access::<EvaluateBatch>(&archived);
                let again = encode(kind, &owned);
                let again = access::<EvaluateBatch>(&again);
                assert_eq!(archived.events.len(), owned.events.len());
                for ((a, b), event) in archived
                    .events
                    .iter()
                    .zip(again.events.iter())
                    .zip(&owned.events)
                {
                    assert_eq!(
                        validate_event(a),
                        validate_event(b),
                        "field checks depend on the layout"
                    );
                    if validate_event(a).is_ok() {
                        json_round_trip(event);
                    }
                }
            }
        }
        k if k == reload => {
            round_trip::<ReloadRequest>(kind, payload);
        }
        k if k == evaluate | RESPONSE_BIT => {
            round_trip::<Decision>(kind, payload);
        }
        k if k == batch | RESPONSE_BIT => {
            round_trip::<DecisionBatch>(kind, payload);
        }
        k if k == Kind::Stats.response_byte() => {
            round_trip::<StatsReply>(kind, payload);
        }
        k if k == Kind::Topology.response_byte() => {
            round_trip::<TopologyReply>(kind, payload);
        }
        k if k == reload | RESPONSE_BIT => {
            round_trip::<ReloadReply>(kind, payload);
        }
        crate::frame::KIND_ERROR => {
            round_trip::<ErrorReply>(kind, payload);
        }
        _ => {}
    }
}

/// Fuzz target `json_event`: one line of `verdict send` input.
pub fn json_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let event = match event_from_json(text) {
        Ok(event) => event,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error says what is wrong");
            return;
        }
    };
    json_round_trip(&event);
    // What `verdict send` then puts on the wire validates and decodes to the same event.
    let kind = Kind::Evaluate.request_byte();
    let archive = encode(kind, &event);
    let decoded: Event = rkyv::deserialize::<Event, Error>(access::<Event>(&archive))
        .expect("an archive the encoder wrote decodes");
    assert_eq!(decoded, event, "the wire form of a JSON event");
    let _ = validate_event(access::<Event>(&archive)).map_err(|e| e.to_string());
}

// ---- frame: the reference walk and the receive buffer ----

/// What a scan of the whole stream found: every complete frame (with its offset) and how
/// the stream ends.
struct Walked {
    frames: Vec<(usize, FrameAt)>,
    /// Offset of the first byte after the last complete frame.
    rest: usize,
    end: Scan,
}

/// Scans `stream` frame by frame, checking each answer against the bytes.
fn walk(stream: &[u8], len_max: u32) -> Walked {
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let buf = &stream[offset..];
        match scan(buf, len_max) {
            Scan::Frame(at) => {
                check_frame(buf, &at, len_max);
                frames.push((offset, at));
                offset += at.frame_len;
            }
            end @ Scan::Incomplete { need } => {
                assert!(
                    need > buf.len(),
                    "incomplete, yet {} of {need} bytes",
                    buf.len()
                );
                if buf.len() < HEADER_LEN {
                    assert_eq!(
                        need, HEADER_LEN,
                        "without a header only the header is needed"
                    );
                } else {
                    let header = parse_header(buf[..HEADER_LEN].try_into().unwrap(), len_max)
                        .expect("a header scan accepted parses");
                    assert_eq!(
                        need,
                        header.frame_len(),
                        "the frame's length is what is needed"
                    );
                }
                return Walked {
                    frames,
                    rest: offset,
                    end,
                };
            }
            end @ Scan::Broken { id, error } => {
                check_broken(buf, id, error, len_max);
                return Walked {
                    frames,
                    rest: offset,
                    end,
                };
            }
        }
    }
}

/// A frame at the front of `buf`: the header it reports is the header in the bytes.
fn check_frame(buf: &[u8], at: &FrameAt, len_max: u32) {
    let h = at.header;
    assert!(
        h.len <= len_max,
        "length {} over the limit {len_max}",
        h.len
    );
    assert_eq!(h.version, VERSION);
    assert_eq!(at.payload_start, HEADER_LEN);
    assert_eq!(at.frame_len, HEADER_LEN + padded(h.len as usize));
    assert_eq!(at.frame_len % FRAME_ALIGN, 0, "frames keep the alignment");
    assert!(
        at.frame_len <= buf.len(),
        "a frame is complete in the buffer"
    );
    assert_eq!(
        encode_header(h.kind, h.len, h.id)[..],
        buf[..HEADER_LEN],
        "the header re-encodes to the bytes it was read from"
    );
    assert_eq!(
        scan(&buf[..at.frame_len - 1], len_max),
        Scan::Incomplete { need: at.frame_len },
        "one byte short is incomplete"
    );
}

/// A framing error at the front of `buf`: it names what the bytes hold.
fn check_broken(buf: &[u8], id: u64, error: FrameError, len_max: u32) {
    assert!(
        buf.len() >= HEADER_LEN,
        "judged before the header was complete"
    );
    assert_eq!(
        id,
        u64::from_le_bytes(buf[8..16].try_into().unwrap()),
        "the id is echoed"
    );
    let magic_ok = buf[0..2] == MAGIC;
    match error {
        FrameError::BadMagic { found } => {
            assert!(!magic_ok);
            assert_eq!(found, [buf[0], buf[1]]);
        }
        FrameError::BadVersion { found } => {
            assert!(magic_ok && found == buf[2] && found != VERSION);
        }
        FrameError::TooLarge { len, max } => {
            assert!(magic_ok && buf[2] == VERSION);
            assert_eq!(len, u32::from_le_bytes(buf[4..8].try_into().unwrap()));
            assert_eq!(max, len_max);
            assert!(len > max);
        }
    }
    assert!(!error.to_string().is_empty());
}

/// Feeds `stream` to a [`RecvBuffer`] in reads whose sizes come from `split`, taking frames
/// off the front as the server does (peeking ahead with `at` first, as a batch does), and
/// checks it finds what [`walk`] found.
fn receive_in_pieces(stream: &[u8], len_max: u32, split: u8, walked: &Walked) {
    let base = RECV_BUFFER_BYTES_CHOICES[usize::from(split & 3)];
    let read_max = usize::from(split >> 2) + 1;
    let mut rng = u32::from(split).wrapping_mul(0x9E37_79B9) | 1;
    let mut read_len = move || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        1 + rng as usize % read_max
    };
    // The buffer never holds more than its base size or the largest frame the limit allows.
    let bytes_max = padded(base.max(HEADER_LEN)).max(HEADER_LEN + padded(len_max as usize));
    let mut rb = RecvBuffer::new(base);
    let (mut fed, mut taken) = (0, 0);
    loop {
        loop {
            match rb.front(len_max) {
                Scan::Frame(at) => {
                    let mut ahead = 0;
                    let mut next = at;
                    // A batch looks at a few whole frames before it consumes any.
                    while ahead < 8 {
                        same_frame(&rb, &next, stream, walked, taken, ahead);
                        ahead += 1;
                        let offset: usize = walked.frames[taken..taken + ahead]
                            .iter()
                            .map(|(_, f)| f.frame_len)
                            .sum();
                        match rb.at(offset, len_max) {
                            Scan::Frame(f) => next = f,
                            _ => break,
                        }
                    }
                    rb.consume(at.frame_len);
                    taken += 1;
                }
                Scan::Broken { id, error } => {
                    assert_eq!(
                        taken,
                        walked.frames.len(),
                        "broken before every frame was read"
                    );
                    assert_eq!(walked.end, Scan::Broken { id, error });
                    return;
                }
                Scan::Incomplete { .. } => break,
            }
        }
        if fed == stream.len() {
            break;
        }
        let buffered = rb.buffered();
        let space = rb.read_space(len_max);
        assert!(
            !space.is_empty(),
            "no room to read while a frame is incomplete"
        );
        assert!(
            buffered + space.len() <= bytes_max,
            "{buffered} buffered + {} free over {bytes_max}",
            space.len()
        );
        let n = read_len().min(space.len()).min(stream.len() - fed);
        space[..n].copy_from_slice(&stream[fed..fed + n]);
        rb.filled(n);
        fed += n;
    }
    assert_eq!(taken, walked.frames.len(), "every frame was read");
    assert_eq!(
        rb.buffered(),
        stream.len() - walked.rest,
        "the incomplete tail stays"
    );
    assert_eq!(rb.front(len_max), walked.end);
}

/// The frame `ahead` frames past the buffer's front is frame `taken + ahead` of the walk.
fn same_frame(
    rb: &RecvBuffer,
    at: &FrameAt,
    stream: &[u8],
    walked: &Walked,
    taken: usize,
    ahead: usize,
) {
    let (offset, want) = walked.frames[taken + ahead];
    assert_eq!(at.header, want.header);
    assert_eq!(at.frame_len, want.frame_len);
    let got = rb.payload(at);
    assert_eq!(
        got.as_ptr() as usize % FRAME_ALIGN,
        0,
        "payload 16-aligned in the buffer"
    );
    assert_eq!(
        got,
        &stream[offset + want.payload_start..][..want.header.len as usize]
    );
}

// ---- payload: validation, decoding, re-encoding ----

/// `payload` copied to a 16-aligned buffer, as it sits in a receive buffer.
fn aligned(payload: &[u8]) -> AlignedVec<FRAME_ALIGN> {
    let mut out = AlignedVec::with_capacity(payload.len());
    out.extend_from_slice(payload);
    out
}

/// A validated archive of the encoder's own making.
fn access<T>(archive: &[u8]) -> &T::Archived
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, Error>>,
{
    rkyv::access::<T::Archived, Error>(archive)
        .unwrap_or_else(|e| panic!("an archive the encoder wrote fails validation: {e}"))
}

/// `value` as a frame of `kind` from the crate's encoder; returns the payload, 16-aligned.
fn encode<T>(kind: u8, value: &T) -> AlignedVec<FRAME_ALIGN>
where
    T: for<'a, 'b> Serialize<PayloadSerializer<'a, 'b>>,
{
    let frame = encode_frame(kind, 7, value).expect("a decoded value encodes");
    let Scan::Frame(at) = scan(&frame, u32::MAX) else {
        panic!("the encoder wrote something that is not one frame");
    };
    assert_eq!(at.frame_len, frame.len());
    assert_eq!((at.header.kind, at.header.id), (kind, 7));
    aligned(&frame[at.payload_start..][..at.header.len as usize])
}

/// Validates `payload` as a `T` both ways the server does; when valid, decodes it and checks
/// that encoding the decoded value is stable. Returns the aligned payload and the value.
fn round_trip<T>(kind: u8, payload: &[u8]) -> Option<(AlignedVec<FRAME_ALIGN>, T)>
where
    T: Archive + for<'a, 'b> Serialize<PayloadSerializer<'a, 'b>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, Failure>>
        + for<'a> CheckBytes<HighValidator<'a, Error>>
        + Deserialize<T, HighDeserializer<Error>>,
{
    let payload = aligned(payload);
    let decided = rkyv::access::<T::Archived, Failure>(&payload).is_ok();
    let archived = match rkyv::access::<T::Archived, Error>(&payload) {
        Ok(archived) => archived,
        Err(e) => {
            assert!(
                !decided,
                "valid to the server, invalid to its explanation: {e}"
            );
            assert!(!e.to_string().is_empty());
            return None;
        }
    };
    assert!(decided, "invalid to the server, valid to its explanation");
    let owned: T = rkyv::deserialize::<T, Error>(archived)
        .unwrap_or_else(|e| panic!("a payload that validates does not decode: {e}"));
    let first = encode(kind, &owned);
    let again: T = rkyv::deserialize::<T, Error>(access::<T>(&first)).expect("decodes");
    let second = encode(kind, &again);
    assert_eq!(
        first[..],
        second[..],
        "encode(decode(encode(x))) == encode(x)"
    );
    Some((payload, owned))
}

/// An event's field checks do not depend on the archive's layout, and an event that passes
/// them can be written as JSON.
fn event_checks(archived: &[u8], owned: &Event) {
    let kind = Kind::Evaluate.request_byte();
    let verdict = validate_event(access::<Event>(archived));
    let again = encode(kind, owned);
    assert_eq!(
        verdict,
        validate_event(access::<Event>(&again)),
        "field checks depend on the layout"
    );
    match verdict {
        Ok(()) => json_round_trip(owned),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// `event` as JSON parses back to `event` (attributes come back ordered by name).
fn json_round_trip(event: &Event) {
    let json = event_to_json(event).to_string();
    let back = event_from_json(&json)
        .unwrap_or_else(|e| panic!("the JSON form of an event does not parse: {e}\n{json}"));
    let mut want = event.clone();
    want.attributes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        back, want,
        "the JSON form of an event parses to another event\n{json}"
    );
}

// ---- the corpus replay every crate's tests/fuzz_corpus.rs runs ----

/// A fuzz target: its name (the directory of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// [`replay`] for a test: panics listing every failing input, or if nothing ran.
pub fn assert_replays(fuzz_dir: &std::path::Path, targets: &[Target]) {
    match replay(fuzz_dir, targets) {
        Ok(runs) => assert!(runs > 0, "no input under {}", fuzz_dir.display()),
        Err(failures) => panic!(
            "{} failing inputs:\n{}",
            failures.len(),
            failures.join("\n")
        ),
    }
}

/// Runs every file under `<fuzz_dir>/corpus/<name>/` and `<fuzz_dir>/regressions/<name>/`
/// through the body of target `name`, catching panics. Returns how many inputs ran, or one
/// line per input that panicked (and per directory that names no target, or target
/// without a seed). Regressions are optional; every target must have a seed.
pub fn replay(fuzz_dir: &std::path::Path, targets: &[Target]) -> Result<usize, Vec<String>> {
    let mut failures = Vec::new();
    let mut runs = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(dirs) = sorted_entries(&fuzz_dir.join(kind)) else {
            if kind == "corpus" {
                failures.push(format!("{}: no corpus directory", fuzz_dir.display()));
            }
            continue;
        };
        for dir in dirs {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some((_, body)) = targets.iter().find(|(t, _)| *t == name) else {
                failures.push(format!("{}: names no fuzz target", dir.display()));
                continue;
            };
            let files = sorted_entries(&dir).unwrap_or_default();
            for file in files {
                let data =
                    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                runs += 1;
                if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)");
                    failures.push(format!("{}: {why}", file.display()));
                }
            }
        }
    }
    for (name, _) in targets {
        let seeds = sorted_entries(&fuzz_dir.join("corpus").join(name)).unwrap_or_default();
        if seeds.is_empty() {
            failures.push(format!("target `{name}` has no seed in corpus/{name}/"));
        }
    }
    if failures.is_empty() {
        Ok(runs)
    } else {
        Err(failures)
    }
}

fn sorted_entries(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    Ok(paths)
}
