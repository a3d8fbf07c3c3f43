//! What the cluster needs from a replicated broker, as two small interfaces, and their NATS
//! JetStream implementations: [`Broker`] (key-value buckets with compare-and-set: [`Nats`])
//! and [`Streams`] (appended streams with deduplication ids, reads from a time, a shared
//! work queue: [`NatsStreams`]). Everything that must agree across machines goes through
//! them; a Kafka-protocol adapter would implement both. Nothing on a shard core calls them
//! (they run on the cluster and ingest threads, on tokio runtimes of their own, and in the
//! `verdict cluster` CLI).
//!
//! Two key-value buckets, replicated (`cluster.replicas`):
//! - `verdict_nodes`: one record per live node ([`super::table::NodeInfo`]), refreshed
//!   every `cluster.heartbeat_ms`; the bucket forgets a record older than
//!   `cluster.node_ttl_ms`, which is how a node that stopped is noticed;
//! - `verdict_cluster`: the partition map under the key `map`, changed only by
//!   compare-and-set on its revision.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_lite::StreamExt;

/// A bucket of the cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Membership: a record per live node, forgotten after `node_ttl_ms`.
    Nodes,
    /// The partition map.
    Cluster,
}

impl Bucket {
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Nodes => "verdict_nodes",
            Bucket::Cluster => "verdict_cluster",
        }
    }
}

/// The key the partition map is stored under in [`Bucket::Cluster`].
pub const MAP_KEY: &str = "map";

/// A value and the bucket revision that wrote it (the compare-and-set token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub revision: u64,
}

/// Why a broker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// A compare-and-set lost: the key exists (create) or moved past the revision (update).
    #[error("another writer changed it first")]
    Conflict,
    #[error("no answer within {0:?} (cluster.request_timeout_ms)")]
    Timeout(Duration),
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// The broker calls the cluster makes. A Kafka-protocol or other adapter implements these.
#[allow(
    async_fn_in_trait,
    reason = "used with concrete types on one thread; no Send bound is needed"
)]
pub trait Broker {
    /// The value of `key` and its revision; `None` if absent (or deleted, or expired).
    async fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Versioned>, BrokerError>;
    /// Writes `key` only if absent: the new revision, or [`BrokerError::Conflict`].
    async fn create(&self, bucket: Bucket, key: &str, value: Vec<u8>) -> Result<u64, BrokerError>;
    /// Writes `key` only if its revision is still `revision`: the new revision, or
    /// [`BrokerError::Conflict`].
    async fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<u64, BrokerError>;
    /// Writes `key` whatever it holds.
    async fn put(&self, bucket: Bucket, key: &str, value: Vec<u8>) -> Result<u64, BrokerError>;
    /// Removes `key`.
    async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), BrokerError>;
    /// Every present key's value.
    async fn entries(&self, bucket: Bucket) -> Result<Vec<(String, Versioned)>, BrokerError>;
}

/// How to reach NATS and how to make the buckets.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub urls: Vec<String>,
    /// The connection's name as the servers show it.
    pub client_name: String,
    pub request_timeout: Duration,
    /// Replicas of each bucket (at most the servers in the NATS cluster).
    pub replicas: usize,
    /// How long a membership record lives without a refresh.
    pub node_ttl: Duration,
}

/// NATS JetStream: the buckets above, on a connection to any of `urls`.
pub struct Nats {
    client: async_nats::Client,
    nodes: kv::Store,
    cluster: kv::Store,
    timeout: Duration,
    replicas: usize,
}

impl Nats {
    /// Connects and opens (creating if missing) both buckets.
    pub async fn connect(options: &NatsOptions) -> Result<Nats, BrokerError> {
        let timeout = options.request_timeout;
        let urls: Vec<async_nats::ServerAddr> = options
            .urls
            .iter()
            .map(|u| {
                u.parse()
                    .map_err(|e| BrokerError::Unavailable(format!("NATS url {u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name(&options.client_name)
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .connect(urls)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("connecting to NATS: {e}")))?;
        let js = jetstream::new(client.clone());
        let open = |bucket: Bucket, history: i64, max_age: Duration| {
            let js = js.clone();
            let replicas = options.replicas;
            async move {
                within(timeout, async {
                    if let Ok(store) = js.get_key_value(bucket.name()).await {
                        return Ok(store);
                    }
                    let created = js
                        .create_key_value(kv::Config {
                            bucket: bucket.name().into(),
                            history,
                            max_age,
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await;
                    match created {
                        Ok(store) => Ok(store),
                        // Another node created it first.
                        Err(_) => js.get_key_value(bucket.name()).await.map_err(|e| {
                            BrokerError::Unavailable(format!("bucket {}: {e}", bucket.name()))
                        }),
                    }
                })
                .await
            }
        };
        Ok(Nats {
            client,
            nodes: open(Bucket::Nodes, 1, options.node_ttl).await?,
            cluster: open(Bucket::Cluster, 16, Duration::ZERO).await?,
            timeout,
            replicas: options.replicas,
        })
    }

    /// The connection (for the decision stream, which publishes on it).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// The streams on this connection.
    pub fn streams(&self) -> NatsStreams {
        NatsStreams::new(self.client.clone(), self.replicas, self.timeout)
    }

    fn store(&self, bucket: Bucket) -> &kv::Store {
        match bucket {
            Bucket::Nodes => &self.nodes,
            Bucket::Cluster => &self.cluster,
        }
    }
}

/// `work`, or [`BrokerError::Timeout`] past `timeout`.
async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(BrokerError::Timeout(timeout)))
}

/// A failed compare-and-set write: [`BrokerError::Conflict`] if it lost (`lost`: the client
/// says so), else unavailable. Servers since 2.11 answer a write that lost with JetStream
/// error 10164, which async-nats 0.52 knows only as "other" (it maps 10071, the older code):
/// both are also read from the error's text.
fn write_error(lost: bool, e: impl std::fmt::Display) -> BrokerError {
    let text = e.to_string();
    if lost
        || text.contains("wrong last sequence")
        || text.contains("error code 10071")
        || text.contains("error code 10164")
    {
        BrokerError::Conflict
    } else {
        BrokerError::Unavailable(text)
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl Broker for Nats {
    async fn get(&self, bucket: Bucket, key: &str) -> Result<Option<Versioned>, BrokerError> {
        within(self.timeout, async {
            let entry = self.store(bucket).entry(key).await.map_err(unavailable)?;
            Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| Versioned {
                    value: e.value.to_vec(),
                    revision: e.revision,
                }))
        })
        .await
    }

    async fn create(&self, bucket: Bucket, key: &str, value: Vec<u8>) -> Result<u64, BrokerError> {
        within(self.timeout, async {
            self.store(bucket)
                .create(key, value.into())
                .await
                .map_err(|e| {
                    let lost = e.kind() == kv::CreateErrorKind::AlreadyExists;
                    write_error(lost, e)
                })
        })
        .await
    }

    async fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<u64, BrokerError> {
        within(self.timeout, async {
            self.store(bucket)
                .update(key, value.into(), revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::TimedOut => BrokerError::Timeout(self.timeout),
                    kind => write_error(kind == kv::UpdateErrorKind::WrongLastRevision, e),
                })
        })
        .await
    }

    async fn put(&self, bucket: Bucket, key: &str, value: Vec<u8>) -> Result<u64, BrokerError> {
        within(self.timeout, async {
            self.store(bucket)
                .put(key, value.into())
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), BrokerError> {
        within(self.timeout, async {
            self.store(bucket).delete(key).await.map_err(unavailable)
        })
        .await
    }

    async fn entries(&self, bucket: Bucket) -> Result<Vec<(String, Versioned)>, BrokerError> {
        within(self.timeout, async {
            let store = self.store(bucket);
            let mut keys = store.keys().await.map_err(unavailable)?;
            let mut names = Vec::new();
            while let Some(key) = keys.next().await {
                names.push(key.map_err(unavailable)?);
            }
            let mut out = Vec::with_capacity(names.len());
            for key in names {
                if let Some(v) = self.get(bucket, &key).await? {
                    out.push((key, v));
                }
            }
            Ok(out)
        })
        .await
    }
}

/// A stream the cluster keeps: its name and the subjects it takes (`prefix.>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: &'static str,
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub body: bytes::Bytes,
    /// Its place in the stream.
    pub sequence: u64,
    /// Messages the read it came from has left after it.
    pub pending: u64,
}

/// Where a read ([`Streams::read`]) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The messages appended since this time (ms since the Unix epoch).
    Time(u64),
    /// The messages after this stream sequence.
    After(u64),
}

/// How much a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    pub messages: u64,
    /// The sequence of its last message (0: none ever).
    pub last_sequence: u64,
}

/// The replicated streams the cluster appends to and reads: the decision and event streams
/// ([`super::ship`], [`super::replay`]) and ingestion's input and output
/// ([`super::ingest`]). A Kafka-protocol adapter implements these as it would [`Broker`]:
/// a topic per stream, the subject as the record's key, an idempotent producer for the
/// ids, a consumer group for the queue.
pub trait Streams: Clone + Send + Sync + 'static {
    /// An append in flight: resolves once the stream holds the message.
    type Appended: Future<Output = Result<(), BrokerError>> + Send;
    /// A read in progress ([`read`](Self::read)).
    type Reading: Send;
    /// A work queue ([`queue`](Self::queue)).
    type Queue: Send + Sync;
    /// A message taken from a queue and not yet settled.
    type Taken: Send + Sync;

    /// Makes `stream` if it does not exist: replicated, and dropping a message whose id it
    /// has seen within two minutes.
    fn ensure(&self, stream: StreamSpec) -> impl Future<Output = Result<(), BrokerError>> + Send;
    /// How many messages `stream` holds and where it ends; `None` if it does not exist.
    fn state(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<StreamState>, BrokerError>> + Send;
    /// The body of the last message on `subject` of `stream`, if there is one.
    fn last_on(
        &self,
        stream: StreamSpec,
        subject: &str,
    ) -> impl Future<Output = Result<Option<bytes::Bytes>, BrokerError>> + Send;
    /// Sends `body` under `subject` with the id `id` (the stream keeps one message per id);
    /// returns once sent, with the acknowledgement to await.
    fn append(
        &self,
        subject: String,
        id: &str,
        body: bytes::Bytes,
    ) -> impl Future<Output = Result<Self::Appended, BrokerError>> + Send;
    /// Starts reading the messages of `subjects` in `stream` from `from`, in order, up to
    /// its end now; `None` if there are none.
    fn read(
        &self,
        stream: StreamSpec,
        subjects: Vec<String>,
        from: ReadFrom,
    ) -> impl Future<Output = Result<Option<Self::Reading>, BrokerError>> + Send;
    /// The next message of a read.
    fn next(
        reading: &mut Self::Reading,
    ) -> impl Future<Output = Result<Message, BrokerError>> + Send;
    /// The shared queue `durable` over `stream`: a message taken and not settled within
    /// `ack_wait` is given to a taker again.
    fn queue(
        &self,
        stream: StreamSpec,
        durable: &'static str,
        ack_wait: Duration,
    ) -> impl Future<Output = Result<Self::Queue, BrokerError>> + Send;
    /// Takes up to `max` messages, waiting at most `wait` for them.
    fn take(
        queue: &Self::Queue,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<(Message, Self::Taken)>, BrokerError>> + Send;
    /// Settles a taken message: done (`retry` None: the stream confirms it is settled), or
    /// back to the queue, to be taken again after `retry`.
    fn settle(
        &self,
        taken: &Self::Taken,
        retry: Option<Duration>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

/// [`Streams`] on NATS JetStream.
#[derive(Clone)]
pub struct NatsStreams {
    js: jetstream::Context,
    replicas: usize,
    timeout: Duration,
}

impl NatsStreams {
    pub fn new(client: async_nats::Client, replicas: usize, timeout: Duration) -> NatsStreams {
        NatsStreams {
            js: jetstream::new(client),
            replicas,
            timeout,
        }
    }
}

/// A JetStream message as a [`Message`].
fn message_of(m: &jetstream::Message) -> Message {
    let info = m.info().ok();
    Message {
        subject: m.subject.to_string(),
        body: m.payload.clone(),
        sequence: info.as_ref().map_or(0, |i| i.stream_sequence),
        pending: info.as_ref().map_or(0, |i| i.pending),
    }
}

impl Streams for NatsStreams {
    type Appended = std::pin::Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;
    type Reading = jetstream::consumer::pull::Ordered;
    type Queue = jetstream::consumer::PullConsumer;
    type Taken = jetstream::Message;

    async fn ensure(&self, stream: StreamSpec) -> Result<(), BrokerError> {
        let config = jetstream::stream::Config {
            name: stream.name.into(),
            subjects: vec![stream.subjects.into()],
            num_replicas: self.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        within(self.timeout, async {
            self.js
                .get_or_create_stream(config)
                .await
                .map(|_| ())
                .map_err(|e| unavailable(format_args!("stream {}: {e}", stream.name)))
        })
        .await
    }

    async fn state(&self, stream: &str) -> Result<Option<StreamState>, BrokerError> {
        within(self.timeout, async {
            match self.js.get_stream(stream).await {
                Ok(mut s) => s
                    .info()
                    .await
                    .map(|i| {
                        Some(StreamState {
                            messages: i.state.messages,
                            last_sequence: i.state.last_sequence,
                        })
                    })
                    .map_err(unavailable),
                Err(_) => Ok(None),
            }
        })
        .await
    }

    async fn last_on(
        &self,
        stream: StreamSpec,
        subject: &str,
    ) -> Result<Option<bytes::Bytes>, BrokerError> {
        use jetstream::stream::LastRawMessageErrorKind;
        within(self.timeout, async {
            let s = self.js.get_stream(stream.name).await.map_err(unavailable)?;
            match s.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Ok(Some(m.payload)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(unavailable(format_args!(
                    "reading where {subject} stopped: {e}"
                ))),
            }
        })
        .await
    }

    async fn append(
        &self,
        subject: String,
        id: &str,
        body: bytes::Bytes,
    ) -> Result<Self::Appended, BrokerError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let sent = self
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(unavailable)?;
        let timeout = self.timeout;
        Ok(Box::pin(async move {
            within(timeout, async {
                sent.into_future().await.map(|_| ()).map_err(unavailable)
            })
            .await
        }))
    }

    async fn read(
        &self,
        stream: StreamSpec,
        subjects: Vec<String>,
        from: ReadFrom,
    ) -> Result<Option<Self::Reading>, BrokerError> {
        use jetstream::consumer;
        within(self.timeout, async {
            let s = match self.js.get_stream(stream.name).await {
                Ok(s) => s,
                // No stream: nothing was ever appended.
                Err(e)
                    if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(unavailable(format_args!("stream {}: {e}", stream.name))),
            };
            let deliver_policy = match from {
                ReadFrom::Time(ms) => consumer::DeliverPolicy::ByStartTime {
                    start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(ms) * 1_000_000,
                    )
                    .map_err(unavailable)?,
                },
                ReadFrom::After(seq) => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
            };
            let config = consumer::pull::OrderedConfig {
                filter_subjects: subjects,
                deliver_policy,
                ..Default::default()
            };
            let consumer = s.create_consumer(config).await.map_err(unavailable)?;
            if consumer.cached_info().num_pending == 0 {
                return Ok(None);
            }
            consumer.messages().await.map(Some).map_err(unavailable)
        })
        .await
    }

    async fn next(reading: &mut Self::Reading) -> Result<Message, BrokerError> {
        match reading.next().await {
            None => Err(unavailable("the read ended early")),
            Some(Err(e)) => Err(unavailable(e)),
            Some(Ok(m)) => Ok(message_of(&m)),
        }
    }

    async fn queue(
        &self,
        stream: StreamSpec,
        durable: &'static str,
        ack_wait: Duration,
    ) -> Result<Self::Queue, BrokerError> {
        use jetstream::consumer;
        let config = consumer::pull::Config {
            durable_name: Some(durable.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            num_replicas: self.replicas,
            ..Default::default()
        };
        within(self.timeout, async {
            let s = self.js.get_stream(stream.name).await.map_err(unavailable)?;
            s.get_or_create_consumer(durable, config)
                .await
                .map_err(|e| unavailable(format_args!("consumer {durable}: {e}")))
        })
        .await
    }

    async fn take(
        queue: &Self::Queue,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(Message, Self::Taken)>, BrokerError> {
        let mut batch = queue
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(unavailable)?;
            out.push((message_of(&m), m));
        }
        Ok(out)
    }

    async fn settle(
        &self,
        taken: &Self::Taken,
        retry: Option<Duration>,
    ) -> Result<(), BrokerError> {
        match retry {
            Some(after) => taken
                .ack_with(jetstream::AckKind::Nak(Some(after)))
                .await
                .map_err(unavailable),
            None => {
                within(self.timeout, async {
                    taken.double_ack().await.map_err(unavailable)
                })
                .await
            }
        }
    }
}
