//! Streaming ingestion (`cluster.ingest`): producers that prefer a log to a socket publish
//! events, in the JSON `verdict send` reads, to `verdict.input.<partition>` (the partition
//! of the event's account; any subject under `verdict.input.` is taken) in the replicated
//! stream `VERDICT_INPUT`. Every ingesting node pulls from one shared durable consumer,
//! `verdict-ingest`, so each message goes to one node at a time, and:
//! 1. decides the batch it pulled through its own shared data port, like any client: each
//!    event is decided by the node and shard that own it (forwarded as needed), so
//!    ingestion is as exact as the socket path;
//! 2. publishes each decision (the JSON `verdict send` prints) to `verdict.output.<partition>`
//!    (its account's) in the replicated stream `VERDICT_OUTPUT`, message id = the event's id, and waits for
//!    the stream's acknowledgement;
//! 3. only then acknowledges the input message (a double ack: the server confirms it).
//!
//! A node that dies between 2 and 3, or before 2, leaves the message unacknowledged; the
//! consumer redelivers it after `cluster.ingest_ack_wait_ms` to a live node, which decides
//! it again and publishes under the same id: the output stream drops the copy, so
//! redelivery never duplicates a decision in the output (within the stream's duplicate
//! window). The event's velocity windows do count it twice then; that is the price of
//! at-least-once input, said in README.
//!
//! An event the engine refuses for a reason that will not change (invalid JSON, a field out
//! of range: errors 5, 6) is published to `verdict.output.errors` as `{"event_id",
//! "error"}` under the same id and acknowledged; one refused for now (errors 8, 9: overloaded, an owner unreachable) is
//! not acknowledged but negatively acknowledged with a delay, and comes back.
//!
//! The ingest loop runs on a thread of its own (its own tokio runtime and NATS connection,
//! a blocking client to this node's port): never on a shard core.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::info;
use verdict_net::routing::partition_of;
use verdict_net::{Client, ClientError, Decision, Kind};

use super::broker::{Message, NatsOptions, StreamSpec, Streams};

/// The input stream's name.
pub const INPUT: &str = "VERDICT_INPUT";
/// The output stream's name.
pub const OUTPUT: &str = "VERDICT_OUTPUT";
/// The durable consumer every node pulls from.
pub const CONSUMER: &str = "verdict-ingest";

/// The input stream and the subjects it takes.
const INPUT_SPEC: StreamSpec = StreamSpec {
    name: INPUT,
    subjects: "verdict.input.>",
};
/// The output stream and the subjects it takes.
const OUTPUT_SPEC: StreamSpec = StreamSpec {
    name: OUTPUT,
    subjects: "verdict.output.>",
};

/// How long a pull waits for messages before trying again (and checking for the stop).
const PULL_WAIT: Duration = Duration::from_millis(500);
/// How long a message refused for now waits before it is delivered again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// What the ingest loop needs.
#[derive(Clone)]
pub struct IngestConfig {
    pub nats: NatsOptions,
    /// This node's shared data port (`address:port`).
    pub addr: String,
    pub partitions: u32,
    pub batch_max: usize,
    pub ack_wait: Duration,
    /// This node's view: while it routes nothing (no map, fenced) it pulls nothing, and
    /// the other nodes get the messages.
    pub view: super::view::ViewCell,
}

/// Starts the ingest thread; it runs until `stop`.
pub fn start(
    config: IngestConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    super::spawn_runtime("verdict-ingest", run(config, stop))
}

async fn run(config: IngestConfig, stop: Arc<AtomicBool>) {
    let mut warned = None;
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = ingest(&config, &stop).await {
            super::ship::warn_now_and_then(&mut warned, Duration::from_secs(10), &e);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Connects, makes the streams and the consumer, and pulls until `stop` or a failure.
async fn ingest(config: &IngestConfig, stop: &AtomicBool) -> Result<(), String> {
    let nats = &config.nats;
    let streams = super::broker::Nats::connect(nats)
        .await
        .map_err(|e| format!("ingest: {e}"))?
        .streams();
    let timeout = nats.request_timeout;
    streams
        .ensure(INPUT_SPEC)
        .await
        .map_err(|e| format!("ingest: the input stream: {e}"))?;
    streams
        .ensure(OUTPUT_SPEC)
        .await
        .map_err(|e| format!("ingest: the output stream: {e}"))?;
    let queue = streams
        .queue(INPUT_SPEC, CONSUMER, config.ack_wait)
        .await
        .map_err(|e| format!("ingest: the consumer: {e}"))?;
    let mut engine = Client::connect(&config.addr).map_err(|e| {
        format!(
            "ingest: connecting to this node's port {}: {e}",
            config.addr
        )
    })?;
    let _ = engine.set_timeout(Some(timeout * 2));
    info!("ingest: pulling {INPUT} through consumer {CONSUMER}");
    while !stop.load(Ordering::Relaxed) {
        if config.view.load().closed.is_some() {
            tokio::time::sleep(PULL_WAIT).await;
            continue;
        }
        let taken = super::broker::NatsStreams::take(&queue, config.batch_max, PULL_WAIT)
            .await
            .map_err(|e| format!("ingest: pulling: {e}"))?;
        if taken.is_empty() {
            continue;
        }
        let messages: Vec<&Message> = taken.iter().map(|(m, _)| m).collect();
        let answers = decide(&mut engine, &messages, config.partitions)?;
        for ((_, taken), answer) in taken.iter().zip(answers) {
            settle(&streams, taken, answer).await?;
        }
    }
    Ok(())
}

/// What became of one input message.
enum Answer {
    /// Decided: the decision and the partition of its account.
    Decided(Decision, u32),
    /// Refused for good: published as an error, acknowledged.
    Failed {
        event_id: String,
        code: u16,
        message: String,
    },
    /// Refused for now: delivered again later.
    Retry,
}

/// Decides every event of `messages` through this node's port, pipelined.
fn decide(
    engine: &mut Client,
    messages: &[&Message],
    partitions: u32,
) -> Result<Vec<Answer>, String> {
    let mut sent: Vec<Result<(u64, String, u32), Answer>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let text = String::from_utf8_lossy(&m.body);
        match verdict_net::json::event_from_json(&text) {
            Ok(event) => {
                let id = engine
                    .send(Kind::Evaluate, &event)
                    .map_err(|e| format!("ingest: encoding an event: {e}"))?;
                let partition = partition_of(event.account_id.as_bytes(), partitions);
                sent.push(Ok((id, event.event_id, partition)));
            }
            Err(e) => sent.push(Err(Answer::Failed {
                event_id: unparsed_id(&text, m, i),
                code: if e.is_syntax() {
                    verdict_net::ErrorCode::InvalidPayload as u16
                } else {
                    verdict_net::ErrorCode::BadField as u16
                },
                message: e.to_string(),
            })),
        }
    }
    engine
        .flush()
        .map_err(|e| format!("ingest: writing to this node: {e}"))?;
    let mut answers = Vec::with_capacity(sent.len());
    for s in sent {
        answers.push(match s {
            Err(answer) => answer,
            Ok((id, event_id, partition)) => {
                let response = engine
                    .recv()
                    .map_err(|e| format!("ingest: reading from this node: {e}"))?;
                match response.expect(Kind::Evaluate, id).and_then(|r| r.decode()) {
                    Ok(d) => Answer::Decided(d, partition),
                    Err(ClientError::Server { code, .. }) if code == 8 || code == 9 => {
                        Answer::Retry
                    }
                    Err(ClientError::Server { code, message, .. }) => Answer::Failed {
                        event_id,
                        code,
                        message,
                    },
                    Err(e) => return Err(format!("ingest: this node's answer: {e}")),
                }
            }
        });
    }
    Ok(answers)
}

/// The id an unparsable message is published under: its `event_id` if that much can be
/// read, else its place in the input stream.
fn unparsed_id(text: &str, m: &Message, i: usize) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["event_id"].as_str().map(str::to_string))
        .or_else(|| (m.sequence > 0).then(|| format!("input-{}", m.sequence)))
        .unwrap_or_else(|| format!("input-unknown-{i}"))
}

/// Publishes a message's outcome (decided or failed) and acknowledges it, or sends it
/// back for later.
async fn settle<S: Streams>(streams: &S, taken: &S::Taken, answer: Answer) -> Result<(), String> {
    let (event_id, body, subject) = match answer {
        Answer::Retry => {
            streams
                .settle(taken, Some(RETRY_DELAY))
                .await
                .map_err(|e| format!("ingest: sending a message back: {e}"))?;
            return Ok(());
        }
        Answer::Decided(d, partition) => {
            let body = verdict_net::json::decision_to_json(&d);
            (d.event_id, body, format!("verdict.output.{partition}"))
        }
        Answer::Failed {
            event_id,
            code,
            message,
        } => {
            let body = serde_json::json!({
                "event_id": event_id,
                "error": verdict_net::json::error_to_json(code, &message),
            });
            (event_id, body, "verdict.output.errors".to_string())
        }
    };
    let body = serde_json::to_vec(&body).expect("JSON serializes");
    streams
        .append(subject, &event_id, body.into())
        .await
        .map_err(|e| format!("ingest: publishing a decision: {e}"))?
        .await
        .map_err(|e| format!("ingest: the output stream did not take a decision: {e}"))?;
    streams
        .settle(taken, None)
        .await
        .map_err(|e| format!("ingest: acknowledging the input: {e}"))?;
    Ok(())
}
