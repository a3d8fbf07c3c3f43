//! What the cluster needs from a replicated broker, as a small interface ([`Broker`]), and
//! its NATS JetStream implementation ([`Nats`]). Everything that must agree across machines
//! goes through it; nothing on a shard core calls it (it runs on the cluster thread, on a
//! tokio runtime of its own, and in the `verdict cluster` CLI).
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
        })
    }

    /// The connection (for the decision stream, which publishes on it).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
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
