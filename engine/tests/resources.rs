//! End-to-end: what a client can make the data port hold. Memory follows the bytes in
//! flight, not the number of connections, and comes back after a burst; a peer that dribbles
//! a frame is closed at the frame deadline, so slow peers cannot hold every slot.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, event, topology};
use verdict_net::Kind;
use verdict_net::frame::{HEADER_LEN, encode_frame};

/// The server's resident memory, KiB.
fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn connections_open(server: &Server) -> u64 {
    server.client().stats().unwrap().total.connections_open
}

/// `frames` pipelined evaluate frames, as one buffer.
fn evaluates(frames: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..frames {
        let frame = encode_frame(Kind::Evaluate.request_byte(), i, &event(i)).unwrap();
        bytes.extend_from_slice(&frame);
    }
    bytes
}

/// Opens `open_at_once` connections, sends each `frames` pipelined evaluates, reads every
/// answer, closes them; `rounds` times.
fn churn(server: &Server, rounds: usize, open_at_once: usize, frames: u64) {
    let request = evaluates(frames);
    for _ in 0..rounds {
        let mut conns: Vec<TcpStream> = (0..open_at_once)
            .map(|i| {
                let addr = if i % 3 == 0 {
                    server.addr()
                } else {
                    server.shard_addr(i % 2)
                };
                TcpStream::connect(addr).unwrap()
            })
            .collect();
        for c in &mut conns {
            c.write_all(&request).unwrap();
        }
        for c in &mut conns {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut answered = 0;
            let mut buf = vec![0u8; 64 * 1024];
            let mut have = Vec::new();
            while answered < frames {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "closed after {answered} answers");
                have.extend_from_slice(&buf[..n]);
                // Count whole frames at the front.
                loop {
                    if have.len() < HEADER_LEN {
                        break;
                    }
                    let len = u32::from_le_bytes(have[4..8].try_into().unwrap()) as usize;
                    let whole = HEADER_LEN + verdict_net::frame::padded(len);
                    if have.len() < whole {
                        break;
                    }
                    assert_eq!(have[3], Kind::Evaluate.response_byte());
                    have.drain(..whole);
                    answered += 1;
                }
            }
        }
    }
}

#[test]
fn memory_after_a_burst_of_connections_comes_back_near_where_it_was() {
    let server = Server::with_topology(&topology(&[0, 1], ""));
    // Warm up: the shards' first connections, model instances, histograms.
    churn(&server, 1, 50, 100);
    let wait_closed = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while connections_open(&server) > 1 {
            assert!(Instant::now() < deadline, "connections did not close");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_closed();
    let before = rss_kib(&server);
    churn(&server, 10, 200, 100);
    wait_closed();
    // Freed memory goes back to the system at the control thread's next heap trim (every
    // second): wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let after = rss_kib(&server);
        if after <= before + RSS_GROWTH_KIB_MAX || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("RSS before the burst {before} KiB, after 2,000 connections {after} KiB");
    assert!(
        after <= before + RSS_GROWTH_KIB_MAX,
        "RSS grew from {before} KiB to {after} KiB (bound {RSS_GROWTH_KIB_MAX} KiB)"
    );
}

/// The documented bound on what a burst may leave behind (README, "Limits").
const RSS_GROWTH_KIB_MAX: u64 = 16 * 1024;

#[test]
fn dribbling_peers_are_closed_at_the_frame_deadline_and_new_clients_are_served() {
    let toml = topology(
        &[0],
        "connections_per_shard_max = 20\nframe_timeout_ms = 1000\n",
    );
    let server = Server::with_topology(&toml);
    let frame = evaluates(1);
    // Every slot taken by a peer that sent the start of a frame and then stalls.
    let mut slow: Vec<TcpStream> = (0..19)
        .map(|_| {
            let mut c = TcpStream::connect(server.addr()).unwrap();
            c.write_all(&frame[..HEADER_LEN + 3]).unwrap();
            c
        })
        .collect();
    // One more byte a little later: progress on a frame does not extend its deadline. (On
    // a slow machine the deadline may already have closed some: their write may fail.)
    std::thread::sleep(Duration::from_millis(300));
    for c in &mut slow {
        let _ = c.write_all(&frame[HEADER_LEN + 3..HEADER_LEN + 4]);
    }
    let started = Instant::now();
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        // Closed without an answer: the frame was never accepted.
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    }
    eprintln!("dribblers closed after {:?}", started.elapsed());
    // Their slots are free again: a new client is served.
    let d = server.client().evaluate(&event(7)).unwrap();
    assert_eq!(d.event_id, "evt-7");
    let stats = server.client().stats().unwrap();
    let timed_out = stats
        .total
        .errors_by_code
        .iter()
        .map(|e| e.count)
        .sum::<u64>();
    assert_eq!(
        timed_out, 0,
        "a dribbler gets no error frame: nothing was accepted"
    );
}

#[test]
fn the_connection_memory_budget_refuses_connections_and_frames_it_cannot_hold() {
    // 1 MiB for the shard: base buffers of 4 KiB + 4 KiB, so 128 connections fit.
    let limits = "connection_memory_bytes_max = 1048576\nread_buffer_bytes = 4096\n\
                  write_buffer_bytes = 4096\nconnections_per_shard_max = 1000\n";
    let server = Server::with_topology(&topology(&[0], limits));
    // One connection is the probe below; 127 more fill the budget.
    let mut probe = common::Raw::connect(&server.addr());
    let held: Vec<TcpStream> = (0..127)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let mut extra = common::Raw::connect(&server.addr());
    let message = extra.expect_error(0, verdict_net::ErrorCode::Overloaded);
    assert!(message.contains("connection_memory_bytes_max"), "{message}");
    extra.expect_closed();
    drop(held);
    // A frame announcing 1,048,000 bytes (under the frame limit) grows the receive buffer as
    // its bytes arrive, until the budget has no room for the next step (its last doubling
    // needs about 1 MiB): error 8 with the frame's id, then the close.
    let header =
        verdict_net::frame::encode_header(Kind::EvaluateBatch.request_byte(), 1_048_000, 42);
    probe.send(&header);
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..16 {
        if probe.stream.write_all(&chunk).is_err() {
            break;
        }
    }
    let message = probe.expect_error(42, verdict_net::ErrorCode::Overloaded);
    assert!(message.contains("no room"), "{message}");
    probe.expect_closed();
    // The shard serves on.
    assert_eq!(
        server.client().evaluate(&event(3)).unwrap().event_id,
        "evt-3"
    );
}
