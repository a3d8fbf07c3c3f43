//! The reference ceiling: a server that speaks verdict's framing over io_uring (monoio) and
//! answers every frame with a fixed response of the right kind and id, doing no other work:
//! no validation, no decision, no stats. Whatever the engine does beyond this is its cost.
//!
//! Evaluate requests get a fixed, valid `Decision` archive (the same size class as the
//! engine's), batch requests a one-decision batch, everything else an empty payload.

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use verdict_net::frame::{RESPONSE_BIT, Scan, encode_frame, scan};
use verdict_net::{Action, Decision, DecisionBatch};

/// Fixed response payloads, pre-encoded once (ids patched per response).
struct Canned {
    evaluate: Vec<u8>,
    batch: Vec<u8>,
}

fn canned() -> Canned {
    let decision = Decision {
        event_id: "evt-0000000".into(),
        action: Action::Allow,
        score: 0,
        rules: vec![],
        shadow_rules: vec![],
        models: vec![],
        epoch: 0,
        shard: 0,
        server_ns: 0,
    };
    let evaluate = encode_frame(0x82, 0, &decision).expect("encodes").to_vec();
    let batch = encode_frame(
        0x83,
        0,
        &DecisionBatch {
            decisions: vec![decision],
        },
    )
    .expect("encodes")
    .to_vec();
    Canned { evaluate, batch }
}

/// Serves on `addr` until the process ends; calls `ready` with the bound address.
pub fn serve(
    addr: SocketAddr,
    cpu: Option<usize>,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    if let Some(cpu) = cpu {
        let _ = monoio::utils::bind_to_cpu_set([cpu]);
    }
    crate::run_monoio(async move {
        let listener = TcpListener::bind(addr)?;
        ready(listener.local_addr()?);
        let canned = std::rc::Rc::new(canned());
        loop {
            let (stream, _) = listener.accept().await?;
            let canned = canned.clone();
            monoio::spawn(async move {
                let _ = connection(stream, &canned).await;
            });
        }
    })?
}

async fn connection(mut stream: TcpStream, canned: &Canned) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut inbuf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(256 * 1024);
    loop {
        let len = inbuf.len();
        if len == inbuf.capacity() {
            inbuf.reserve(len);
        }
        let (res, slice) = stream.read(inbuf.slice_mut(len..)).await;
        inbuf = slice.into_inner();
        if res? == 0 {
            return Ok(());
        }
        let mut head = 0;
        loop {
            match scan(&inbuf[head..], u32::MAX) {
                Scan::Frame(at) => {
                    let id = at.header.id;
                    let fixed: &[u8] = match at.header.kind {
                        0x02 => &canned.evaluate,
                        0x03 => &canned.batch,
                        _ => &[],
                    };
                    let start = out.len();
                    if fixed.is_empty() {
                        let kind = at.header.kind | RESPONSE_BIT;
                        out.extend_from_slice(&verdict_net::frame::encode_header(kind, 0, id));
                    } else {
                        out.extend_from_slice(fixed);
                    }
                    out[start + 8..start + 16].copy_from_slice(&id.to_le_bytes());
                    head += at.frame_len;
                }
                Scan::Incomplete { .. } => break,
                Scan::Broken { .. } => return Ok(()),
            }
        }
        inbuf.drain(..head);
        if !out.is_empty() {
            let (res, buf) = stream.write_all(out).await;
            out = buf;
            res?;
            out.clear();
        }
    }
}
