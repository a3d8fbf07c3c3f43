//! State that moves with a partition. Every decided event is in `VERDICT_EVENTS` once per
//! distinct partition of its keys (account, device, IP, merchant: see [`super::ship`]), so
//! a partition's subject holds every event that touched any window it keeps. A node that
//! comes to own a partition (a failover, a rebalance, its own restart) keeps it *cold*:
//! every event with a key in it is refused (error 9, retry) while the cluster thread
//! replays the subject from the longest window the rules use (plus [`REPLAY_MARGIN`]) to
//! its end, handing each event to the shard that keeps the partition, which records the
//! event's keys of that partition as if it had decided it. Once every shard has applied
//! its share the partition turns warm and is served.
//!
//! Before replaying, the node waits until every other live node says it has shipped all it
//! decided under older maps (its record's `shipped_epoch`), so nothing decided by the old
//! owner is missed; a node that is gone cannot say so, and what it decided and had not
//! shipped is lost (the tail `verdict cluster status` counts as unshipped).
//!
//! When the old owner is alive it hands the partition off ([`super::handoff`]): it goes on
//! deciding while this node replays the history ([`Start::Window`], *preparing*), then lets
//! go, and this node replays only what was appended after its first read
//! ([`Start::After`]) before serving.
//!
//! The shards take their share through a bounded queue each ([`Job`]), served by a task of
//! their own between requests ([`serve`]); nothing here runs on a shard core.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use serde_json::{Map, Value};

use verdict_net::ArchivedEvent;
use verdict_net::routing::partition_of;
use verdict_rules::{VelocityKey, key_value};

use super::broker::{ReadFrom, Streams};
use super::view::ClusterView;
use crate::mesh::{KeyMask, key_bit};
use crate::request::peer::{Scratch, record_keys};
use crate::shard::Shard;

/// History replayed beyond the longest window: the stream's clock (publish time) and the
/// windows' (event time) differ by the log's and the shipper's delays, and by clients'
/// clocks.
pub const REPLAY_MARGIN: Duration = Duration::from_secs(60);

/// Jobs a shard's queue holds before the replay waits for it.
pub const FEED_DEPTH: usize = 4096;

/// Jobs a shard applies before it lets its other tasks run.
const JOBS_PER_TURN: usize = 256;

/// What the cluster thread asks of one shard while catching up.
pub enum Job {
    /// Forget the windows of these partitions (`[p]` true), kept from an earlier time this
    /// node owned them (they stopped when it gave them away), before their history is
    /// replayed.
    Forget(Arc<Vec<bool>>),
    /// Record `event` (an archived `Event`) in the rules' functions of the keys in `keys`.
    Record {
        event: Arc<AlignedVec<16>>,
        keys: KeyMask,
    },
    /// Say, once every job before this one is applied, how many events were recorded since
    /// the last `Done`.
    Done(flume::Sender<u64>),
}

/// One bounded queue per shard: the senders for the cluster thread, the receivers for the
/// shards.
pub fn feeds(shards: usize) -> (Vec<flume::Sender<Job>>, Vec<flume::Receiver<Job>>) {
    (0..shards).map(|_| flume::bounded(FEED_DEPTH)).unzip()
}

/// A shard's side: applies the jobs of its queue until the cluster thread is gone.
pub async fn serve(shard: Rc<Shard>, jobs: flume::Receiver<Job>) {
    let mut scratch = Scratch::default();
    let mut values = Vec::new();
    let mut recorded = 0u64;
    let mut turn = 0;
    while let Ok(job) = jobs.recv_async().await {
        match job {
            Job::Forget(partitions) => {
                let forget = |p: u32| partitions.get(p as usize).copied().unwrap_or(false);
                shard.velocity.borrow_mut().forget(forget);
            }
            Job::Record { event, keys } => {
                // Checked where it was made; checked again rather than trusted.
                if let Ok(event) = rkyv::access::<ArchivedEvent, rancor::Failure>(&event) {
                    let published = shard.rules.borrow().clone();
                    let mut state = shard.velocity.borrow_mut();
                    values.clear();
                    record_keys(
                        &published.rules,
                        event,
                        keys,
                        &mut state,
                        &mut scratch,
                        &mut values,
                    );
                    recorded += 1;
                }
            }
            Job::Done(answer) => {
                let _ = answer.send(std::mem::take(&mut recorded));
            }
        }
        turn += 1;
        if turn >= JOBS_PER_TURN {
            turn = 0;
            glommio::yield_if_needed().await;
        }
    }
}

/// What one catch-up did.
#[derive(Debug, Clone, Default)]
pub struct CaughtUp {
    pub partitions: usize,
    /// Every message of the partitions up to this stream sequence is applied: a later
    /// catch-up from here ([`Start::After`]) applies the rest, none twice.
    pub through: u64,
    /// Messages read from the stream.
    pub messages: u64,
    /// Events the shards recorded.
    pub recorded: u64,
    /// Messages that were not an event this engine can read (counted, skipped).
    pub skipped: u64,
    pub took: Duration,
}

/// The fields of a stream row that are its event's (the rest are its decision's).
const EVENT_FIELDS: [&str; 13] = [
    "event_id",
    "timestamp_ms",
    "account_id",
    "merchant_id",
    "amount_minor",
    "currency",
    "country",
    "channel",
    "device_id",
    "ip",
    "mcc",
    "features",
    "attributes",
];

const KEYS: [VelocityKey; 4] = [
    VelocityKey::Account,
    VelocityKey::Device,
    VelocityKey::Ip,
    VelocityKey::Merchant,
];

/// The archived event of one stream row; `None` if the row carries none this engine reads.
fn event_of(row: &[u8]) -> Option<AlignedVec<16>> {
    let Value::Object(mut row) = serde_json::from_slice::<Value>(row).ok()? else {
        return None;
    };
    let fields: Map<String, Value> = EVENT_FIELDS
        .iter()
        .filter_map(|&f| row.remove(f).map(|v| (f.to_string(), v)))
        .collect();
    let text = Value::Object(fields).to_string();
    let event = verdict_net::json::event_from_json(&text).ok()?;
    rkyv::to_bytes::<rancor::Error>(&event).ok()
}

/// The keys of `event` whose partition is `p`.
fn keys_in(event: &ArchivedEvent, p: u32, partitions: u32) -> KeyMask {
    let mut ip = [0u8; 16];
    KEYS.iter()
        .filter(|&&key| {
            key_value(event, key, &mut ip).is_some_and(|v| partition_of(v, partitions) == p)
        })
        .fold(0, |mask, &key| mask | key_bit(key))
}

/// Where a catch-up starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The shards forget the partitions' windows, then replay from the rules' longest
    /// window (this) plus [`REPLAY_MARGIN`] ago.
    Window(Duration),
    /// The messages after this stream sequence, onto the windows an earlier catch-up built
    /// (its [`CaughtUp::through`]): the tail of a handoff, appended while the old owner
    /// still decided the partitions.
    After(u64),
}

/// What one catch-up replays, and where.
pub struct Plan<S> {
    /// Where the history is.
    pub streams: S,
    /// Each shard's queue.
    pub feeds: Vec<flume::Sender<Job>>,
    /// The view that gave this node the partitions.
    pub view: ClusterView,
    /// The partitions to replay (the map gives them to this node).
    pub cold: Vec<u32>,
    pub start: Start,
    /// The most any one NATS call may take.
    pub timeout: Duration,
}

/// Replays `plan.cold` from [`super::ship::EVENTS`] into the shards: from a window ago
/// (after every shard forgets what it kept of them) or after a sequence, to the stream's
/// end at the start; then waits until every shard has applied its share.
pub async fn catch_up<S: Streams>(plan: Plan<S>) -> Result<CaughtUp, String> {
    let Plan { feeds, cold, .. } = &plan;
    let (view, start, timeout) = (&plan.view, &plan.start, &plan.timeout);
    let started = Instant::now();
    let closed = || "a shard stopped while catching up".to_string();
    if let Start::Window(_) = start {
        let mut forget = vec![false; view.partitions as usize];
        for &p in cold {
            forget[p as usize] = true;
        }
        let forget = Arc::new(forget);
        for feed in feeds {
            feed.send_async(Job::Forget(forget.clone()))
                .await
                .map_err(|_| closed())?;
        }
    }
    // Where the stream ends before the read: every message after it is newer than the read.
    let state = tokio::time::timeout(*timeout, plan.streams.state(super::ship::EVENTS))
        .await
        .map_err(|_| format!("the event stream did not answer within {timeout:?}"))?
        .map_err(|e| format!("the event stream: {e}"))?;
    let end = state.map_or(0, |s| s.last_sequence);
    let mut done = CaughtUp {
        partitions: cold.len(),
        through: match start {
            Start::After(seq) => end.max(*seq),
            Start::Window(_) => end,
        },
        ..CaughtUp::default()
    };
    if *start != Start::Window(Duration::ZERO) && !cold.is_empty() {
        replay_stream(&plan, &mut done).await?;
    }
    for feed in feeds {
        let (tx, rx) = flume::bounded(1);
        feed.send_async(Job::Done(tx)).await.map_err(|_| closed())?;
        done.recorded += rx.recv_async().await.map_err(|_| closed())?;
    }
    done.took = started.elapsed();
    Ok(done)
}

async fn replay_stream<S: Streams>(plan: &Plan<S>, done: &mut CaughtUp) -> Result<(), String> {
    let Plan {
        streams,
        feeds,
        view,
        cold,
        start,
        timeout,
    } = plan;
    let partitions = view.partitions;
    let subjects = if cold.len() == partitions as usize {
        vec!["verdict.events.>".to_string()]
    } else {
        cold.iter().map(|p| format!("verdict.events.{p}")).collect()
    };
    let from = match *start {
        Start::Window(window) => ReadFrom::Time(
            super::now_ms().saturating_sub((window + REPLAY_MARGIN).as_millis() as u64),
        ),
        Start::After(seq) => ReadFrom::After(seq),
    };
    // No stream or nothing since: nothing to replay.
    let Some(mut reading) = streams
        .read(super::ship::EVENTS_SPEC, subjects, from)
        .await
        .map_err(|e| format!("the event stream: {e}"))?
    else {
        return Ok(());
    };
    loop {
        let message = match tokio::time::timeout(*timeout, S::next(&mut reading)).await {
            Err(_) => return Err(format!("no replayed message within {timeout:?}")),
            Ok(Err(e)) => return Err(format!("the replay: {e}")),
            Ok(Ok(m)) => m,
        };
        done.messages += 1;
        done.through = done.through.max(message.sequence);
        let pending = message.pending;
        let p = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|&p| p < partitions && view.granted(p));
        let record = p.and_then(|p| {
            let event = event_of(&message.body)?;
            let archived = rkyv::access::<ArchivedEvent, rancor::Failure>(&event).ok()?;
            let keys = keys_in(archived, p, partitions);
            Some((p, event, keys))
        });
        match record {
            Some((p, event, keys)) if keys != 0 => {
                let job = Job::Record {
                    event: Arc::new(event),
                    keys,
                };
                // A map written when this node had more shards names a shard it lacks.
                let shard = view.granted_shard(p).expect("filtered");
                let feed = feeds.get(shard as usize).ok_or_else(|| {
                    format!(
                        "the map gives partition {p} to shard {shard} of this node, which has {} \
                         shards (restarted with fewer?): rebalance",
                        feeds.len()
                    )
                })?;
                feed.send_async(job)
                    .await
                    .map_err(|_| "a shard stopped while catching up".to_string())?;
            }
            _ => done.skipped += 1,
        }
        if pending == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_row_gives_back_its_event_and_the_keys_of_one_partition() {
        let event = verdict_net::Event {
            event_id: "e1".into(),
            timestamp_ms: 1_700_000_000_000,
            account_id: "acct-1".into(),
            merchant_id: "m-1".into(),
            amount_minor: 1234,
            currency: "USD".into(),
            country: "US".into(),
            channel: "web".into(),
            device_id: "d-1".into(),
            ip: "10.0.0.1".parse().unwrap(),
            mcc: 5411,
            features: vec![0.5],
            attributes: Vec::new(),
        };
        let mut row = verdict_net::json::event_to_json(&event);
        row["action"] = "allow".into();
        row["velocity"] = serde_json::json!({"count(account, 1h)": 3.0});
        let bytes = event_of(row.to_string().as_bytes()).expect("an event");
        let back = rkyv::access::<ArchivedEvent, rancor::Failure>(&bytes).unwrap();
        let back: verdict_net::Event = rkyv::deserialize::<_, rancor::Error>(back).unwrap();
        assert_eq!(back, event);
        let archived = rkyv::access::<ArchivedEvent, rancor::Failure>(&bytes).unwrap();
        let p = partition_of(b"acct-1", 64);
        let keys = keys_in(archived, p, 64);
        assert_ne!(keys & key_bit(VelocityKey::Account), 0);
        // Every key is in exactly one partition's mask.
        let all: KeyMask = (0..64).map(|p| keys_in(archived, p, 64)).fold(0, |a, m| {
            assert_eq!(a & m, 0, "a key in two partitions");
            a | m
        });
        assert_eq!(all.count_ones(), 4);
        assert!(event_of(b"{\"seq\": 3, \"event_error\": \"missing\"}").is_none());
        assert!(event_of(b"not json").is_none());
    }
}
