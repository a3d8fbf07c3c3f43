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

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use log::info;
use verdict_net::routing::partition_of;
use verdict_net::{Client, ClientError, Decision, Kind};

use super::broker::NatsOptions;

/// The input stream's name.
pub const INPUT: &str = "VERDICT_INPUT";
/// The output stream's name.
pub const OUTPUT: &str = "VERDICT_OUTPUT";
/// The durable consumer every node pulls from.
pub const CONSUMER: &str = "verdict-ingest";

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
    let client = super::broker::Nats::connect(nats)
        .await
        .map_err(|e| format!("ingest: {e}"))?
        .client();
    let js = jetstream::new(client);
    let timeout = nats.request_timeout;
    let within = |what: &'static str| move |_| format!("ingest: {what} timed out");
    let input = stream::Config {
        name: INPUT.into(),
        subjects: vec!["verdict.input.>".into()],
        num_replicas: nats.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let input = tokio::time::timeout(timeout, js.get_or_create_stream(input))
        .await
        .map_err(within("creating the input stream"))?
        .map_err(|e| format!("ingest: the input stream: {e}"))?;
    let output = stream::Config {
        name: OUTPUT.into(),
        subjects: vec!["verdict.output.>".into()],
        num_replicas: nats.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    tokio::time::timeout(timeout, js.get_or_create_stream(output))
        .await
        .map_err(within("creating the output stream"))?
        .map_err(|e| format!("ingest: the output stream: {e}"))?;
    let durable = consumer::pull::Config {
        durable_name: Some(CONSUMER.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        num_replicas: nats.replicas,
        ..Default::default()
    };
    let consumer: consumer::PullConsumer =
        tokio::time::timeout(timeout, input.get_or_create_consumer(CONSUMER, durable))
            .await
            .map_err(within("creating the consumer"))?
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
        let mut batch = consumer
            .batch()
            .max_messages(config.batch_max)
            .expires(PULL_WAIT)
            .messages()
            .await
            .map_err(|e| format!("ingest: pulling: {e}"))?;
        let mut messages = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => messages.push(m),
                Err(e) => return Err(format!("ingest: pulling: {e}")),
            }
        }
        if messages.is_empty() {
            continue;
        }
        let answers = decide(&mut engine, &messages, config.partitions)?;
        for (message, answer) in messages.iter().zip(answers) {
            settle(&js, message, answer, timeout).await?;
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
    messages: &[jetstream::Message],
    partitions: u32,
) -> Result<Vec<Answer>, String> {
    let mut sent: Vec<Result<(u64, String, u32), Answer>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let text = String::from_utf8_lossy(&m.payload);
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
fn unparsed_id(text: &str, m: &jetstream::Message, i: usize) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["event_id"].as_str().map(str::to_string))
        .or_else(|| {
            m.info()
                .ok()
                .map(|info| format!("input-{}", info.stream_sequence))
        })
        .unwrap_or_else(|| format!("input-unknown-{i}"))
}

/// Publishes a message's outcome (decided or failed) and acknowledges it, or sends it
/// back for later.
async fn settle(
    js: &jetstream::Context,
    message: &jetstream::Message,
    answer: Answer,
    timeout: Duration,
) -> Result<(), String> {
    let (event_id, body, subject) = match answer {
        Answer::Retry => {
            message
                .ack_with(AckKind::Nak(Some(RETRY_DELAY)))
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
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event_id.as_str());
    let body = serde_json::to_vec(&body).expect("JSON serializes");
    let ack = js
        .publish_with_headers(subject, headers, body.into())
        .await
        .map_err(|e| format!("ingest: publishing a decision: {e}"))?;
    tokio::time::timeout(timeout, ack.into_future())
        .await
        .map_err(|_| "ingest: the output stream did not acknowledge in time".to_string())?
        .map_err(|e| format!("ingest: the output stream did not take a decision: {e}"))?;
    tokio::time::timeout(timeout, message.double_ack())
        .await
        .map_err(|_| "ingest: acknowledging the input timed out".to_string())?
        .map_err(|e| format!("ingest: acknowledging the input: {e}"))?;
    Ok(())
}
