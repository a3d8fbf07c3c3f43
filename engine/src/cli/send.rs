//! `verdict send`: JSON-lines events in, one JSON line out per input line, in order: a
//! decision, or `{"line": N, "error": ...}` for a line that could not be decided. Pipelined
//! up to `depth` requests in flight; when input pauses (an interactive terminal), everything
//! in flight is answered before waiting for more, so typing an event shows its decision.
//! With `--shard-aware` it asks for the topology and sends each event straight to the shard
//! that owns its account (one connection per shard); the output order is the same. With
//! `--cluster-aware` it does that across a cluster's nodes (kind 0x07's topology).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use verdict_net::json::{decision_to_json, event_from_json};
use verdict_net::{Client, ClientError, Decision, Event, Kind, ShardedClient};

use super::connect;

/// Where the events go: the address given, or each event's owner shard.
enum Target {
    Naive(Client),
    ShardAware(ShardedClient),
}

impl Target {
    fn send(&mut self, event: &Event) -> Result<(usize, u64), ClientError> {
        match self {
            Target::Naive(c) => Ok((0, c.send(Kind::Evaluate, event)?)),
            Target::ShardAware(c) => c.send_event(event),
        }
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        match self {
            Target::Naive(c) => c.flush(),
            Target::ShardAware(c) => c.flush(),
        }
    }

    fn recv(&mut self, shard: usize) -> Result<verdict_net::Response, ClientError> {
        match self {
            Target::Naive(c) => c.recv(),
            Target::ShardAware(c) => c.recv(shard),
        }
    }
}

/// One input line's place in the output order.
enum Slot {
    /// Waiting for the response to request `id` on `shard`'s connection (line number for
    /// errors).
    Sent { shard: usize, id: u64, line: usize },
    /// Already known to be an error (line did not parse).
    Failed(serde_json::Value),
}

struct Totals {
    decisions: u64,
    errors: u64,
}

/// Where `verdict send` sends each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Everything to `--addr`.
    Naive,
    /// Each event to the shard that owns it (`--shard-aware`).
    Shards,
    /// Each event to the node and shard that own it (`--cluster-aware`).
    Cluster,
}

pub fn run(
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    file: Option<&Path>,
    depth: usize,
    route: Route,
) -> anyhow::Result<ExitCode> {
    let input: Box<dyn std::io::Read> = match file {
        Some(p) => {
            Box::new(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?)
        }
        None => Box::new(std::io::stdin()),
    };
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut client = match route {
        Route::Shards => Target::ShardAware(
            ShardedClient::connect(addr, tls)
                .with_context(|| format!("connecting to every shard of {addr}"))?,
        ),
        Route::Cluster => Target::ShardAware(
            ShardedClient::connect_cluster(addr, tls)
                .with_context(|| format!("connecting to every shard of {addr}'s cluster"))?,
        ),
        Route::Naive => Target::Naive(connect(addr, tls)?),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let depth = depth.max(1);
    let mut slots: VecDeque<Slot> = VecDeque::with_capacity(depth * 2);
    let mut in_flight = 0usize;
    let mut totals = Totals {
        decisions: 0,
        errors: 0,
    };
    let started = Instant::now();
    let mut line = String::new();
    let mut line_no = 0usize;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).context("reading events")?;
        let at_end = n == 0;
        if !at_end {
            line_no += 1;
            let text = line.trim();
            if !text.is_empty() {
                match event_from_json(text) {
                    Ok(event) => {
                        let (shard, id) = client.send(&event)?;
                        slots.push_back(Slot::Sent {
                            shard,
                            id,
                            line: line_no,
                        });
                        in_flight += 1;
                    }
                    Err(e) => slots.push_back(Slot::Failed(json!({
                        "line": line_no, "error": { "code": null, "name": "bad_json", "message": e.to_string() }
                    }))),
                }
            }
        }
        // Answer everything when input pauses or ends; otherwise keep the window half full.
        let paused = at_end || reader.buffer().is_empty();
        let keep = if paused {
            0
        } else if in_flight >= depth {
            depth / 2
        } else {
            usize::MAX
        };
        if keep != usize::MAX {
            client.flush()?;
            drain(
                &mut client,
                &mut slots,
                &mut in_flight,
                keep,
                &mut out,
                &mut totals,
            )?;
            if paused {
                out.flush()?;
            }
        }
        if at_end {
            break;
        }
    }
    out.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "verdict send: {} decisions, {} errors in {:.3} s ({:.0} events/s)",
        totals.decisions,
        totals.errors,
        secs,
        totals.decisions as f64 / secs.max(1e-9)
    );
    Ok(if totals.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints slots in order until at most `keep` requests are in flight.
fn drain(
    client: &mut Target,
    slots: &mut VecDeque<Slot>,
    in_flight: &mut usize,
    keep: usize,
    out: &mut impl Write,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    while let Some(slot) = slots.front() {
        match slot {
            Slot::Failed(v) => {
                writeln!(out, "{v}")?;
                totals.errors += 1;
            }
            Slot::Sent { shard, id, line } => {
                if *in_flight <= keep {
                    break;
                }
                let (shard, id, line) = (*shard, *id, *line);
                let result: Result<Decision, ClientError> = client
                    .recv(shard)?
                    .expect(Kind::Evaluate, id)
                    .and_then(|r| r.decode());
                *in_flight -= 1;
                match result {
                    Ok(d) => {
                        writeln!(out, "{}", decision_to_json(&d))?;
                        totals.decisions += 1;
                    }
                    Err(ClientError::Server {
                        code,
                        name,
                        message,
                    }) => {
                        let v = json!({ "line": line, "error": { "code": code, "name": name, "message": message } });
                        writeln!(out, "{v}")?;
                        totals.errors += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        slots.pop_front();
    }
    Ok(())
}
