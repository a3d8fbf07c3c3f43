//! This engine as one node of a cluster (`[cluster]`, `verdict serve --cluster URLS --node
//! NAME`): membership and the partition map live in NATS JetStream ([`broker`]), the map
//! and its assignment rules in [`table`].
//!
//! A node runs one cluster thread (a tokio runtime of its own; nothing here runs on a shard
//! core, and a slow or absent NATS never holds a decision). Every `heartbeat_ms` it:
//! 1. refreshes its membership record (the bucket forgets it `node_ttl_ms` after the last
//!    refresh: that is how the others learn a node has stopped);
//! 2. reads the partition map; if there is none, creates the first one over the live nodes
//!    (create-if-absent: one node's wins);
//! 3. if an owner in the map is no longer live, writes the next map, which gives the lost
//!    node's partitions to the surviving owners and moves nothing else, by compare-and-set
//!    on the revision it read: when several nodes notice at once, exactly one epoch wins and
//!    the others read it on their next beat.
//!
//! A second task on the same thread ships the decision log to the decision and event
//! streams ([`ship`]), in slices, so it never delays a heartbeat.
//!
//! A node that joins owns nothing until `verdict cluster rebalance` (moving partitions is
//! an operator's decision); `verdict cluster drain NODE` empties one. On shutdown the node
//! deletes its record, so its partitions move at the others' next beat.
//!
//! After each beat the node publishes what it read as a [`view::ClusterView`] for its
//! shards, which route by it ([`peer`] sends, [`crate::request::peer`] receives): an event
//! is decided on the node that owns its account's partition, and each key's windows are
//! kept by the node that owns that key's partition.
//!
//! What this does not do yet: no state moves with a partition (a node taking one over
//! starts it empty).

pub mod broker;
pub mod ingest;
pub mod peer;
pub mod ship;
pub mod table;
pub mod view;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use crate::config::ClusterConfig;
use broker::{Broker, BrokerError, Bucket, MAP_KEY, Nats, NatsOptions, Versioned};
use table::{NodeInfo, PartitionMap, TableError};

/// Per shard, the sequence number of the last decision record the replicated streams hold
/// (written by the shipper, read by answers that wait for their append).
pub type Appended = Arc<Vec<std::sync::atomic::AtomicU64>>;

/// Starts a thread named `name` that runs `work` on a tokio runtime of its own (the
/// cluster's threads: never a shard core).
pub fn spawn_runtime<F>(name: &str, work: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let label = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(work),
                Err(e) => warn!("{label}: no runtime: {e}"),
            }
        })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The NATS options a node or the CLI connects with.
pub fn nats_options(config: &ClusterConfig, client_name: String) -> NatsOptions {
    NatsOptions {
        urls: config.urls.clone(),
        client_name,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        replicas: config.replicas as usize,
        node_ttl: Duration::from_millis(config.node_ttl_ms),
    }
}

/// The live nodes: every membership record that parses, by name.
pub async fn live_nodes(broker: &impl Broker) -> Result<BTreeMap<String, NodeInfo>, BrokerError> {
    let mut nodes = BTreeMap::new();
    for (key, v) in broker.entries(Bucket::Nodes).await? {
        match serde_json::from_slice::<NodeInfo>(&v.value) {
            Ok(info) if info.node == key => {
                nodes.insert(key, info);
            }
            _ => warn!("cluster: membership record {key:?} does not parse; ignored"),
        }
    }
    Ok(nodes)
}

/// The partition map and its revision; `None` if there is none yet.
pub async fn read_map(broker: &impl Broker) -> Result<Option<(PartitionMap, u64)>, ClusterError> {
    let Some(Versioned { value, revision }) = broker.get(Bucket::Cluster, MAP_KEY).await? else {
        return Ok(None);
    };
    let map: PartitionMap = serde_json::from_slice(&value)
        .map_err(|e| ClusterError::Table(TableError::Invalid(e.to_string())))?;
    map.check()?;
    Ok(Some((map, revision)))
}

/// Why a cluster step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("no partition map yet: no node has joined (the first one to start writes it)")]
    NoMap,
    #[error("no node {0:?}: it is neither live nor in the partition map")]
    NoSuchNode(String),
    #[error(
        "the cluster's map has {map} partitions and this node's routing.partitions is {mine}: \
         every node must use the same count"
    )]
    Partitions { map: u32, mine: u32 },
}

/// A change to the partition map an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Spread partitions over the live, not draining nodes by their shards.
    Rebalance,
    /// Give `node` no partitions (`undo`: take it back as eligible), then rebalance.
    Drain { node: String, undo: bool },
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The map now current.
    pub map: PartitionMap,
    /// Partitions that changed owner (0: the map already was what the change asks).
    pub moved: u32,
}

/// Applies `change` by compare-and-set: reads the map, computes the next one, and writes it
/// on the revision it read; when another writer wins first, reads again and recomputes (at
/// most `attempts` times). A change that would move nothing writes nothing, so two
/// operators racing the same rebalance produce exactly one new epoch.
pub async fn apply(
    broker: &impl Broker,
    change: &Change,
    attempts: u32,
) -> Result<Applied, ClusterError> {
    let mut last = None;
    for _ in 0..attempts.max(1) {
        let live: BTreeMap<String, u32> = live_nodes(broker)
            .await?
            .into_iter()
            .map(|(name, info)| (name, info.shards()))
            .collect();
        let Some((map, revision)) = read_map(broker).await? else {
            return Err(ClusterError::NoMap);
        };
        let mut draining = map.draining.clone();
        if let Change::Drain { node, .. } = change
            && !live.contains_key(node)
            && !map.nodes.contains(node)
            && !map.draining.contains(node)
        {
            return Err(ClusterError::NoSuchNode(node.clone()));
        }
        if let Change::Drain { node, undo } = change {
            draining.retain(|n| n != node);
            if !undo {
                draining.push(node.clone());
            }
        }
        let next = table::assign(Some(&map), map.partitions, &live, &draining)?;
        if next.same_placement(&map) {
            return Ok(Applied { map, moved: 0 });
        }
        let moved = next.moves_from(&map);
        let body = serde_json::to_vec(&next).expect("a map serializes");
        match broker
            .update(Bucket::Cluster, MAP_KEY, body, revision)
            .await
        {
            Ok(_) => return Ok(Applied { map: next, moved }),
            Err(BrokerError::Conflict) => last = Some(BrokerError::Conflict),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or(BrokerError::Conflict).into())
}

/// What the cluster thread last saw (for logs and, later, the shards).
#[derive(Debug, Clone, Default)]
pub struct View {
    pub map: Option<PartitionMap>,
    pub live: Vec<String>,
    /// Heartbeats that could not be written (NATS slow or absent).
    pub heartbeats_failed: u64,
    pub last_error: Option<String>,
}

/// The running cluster thread.
pub struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The ingest thread (`cluster.ingest`).
    ingest: Option<std::thread::JoinHandle<()>>,
    pub view: Arc<Mutex<View>>,
}

impl Member {
    /// Starts the cluster thread for `me` (its record) with `partitions` partitions,
    /// shipping the decision log in `log_dir` when given.
    pub fn start(
        config: &ClusterConfig,
        me: NodeInfo,
        partitions: u32,
        log_dir: Option<std::path::PathBuf>,
        cell: view::ViewCell,
        appended: Option<Appended>,
        rules: Arc<verdict_rules::epoch::EpochCell<crate::scoring::Published>>,
    ) -> std::io::Result<Member> {
        let stop = Arc::new(AtomicBool::new(false));
        let view = Arc::new(Mutex::new(View::default()));
        let ingest = if config.ingest {
            let settings = ingest::IngestConfig {
                nats: nats_options(config, format!("verdict node {} ingest", me.node)),
                addr: if me.address.contains(':') {
                    format!("[{}]:{}", me.address, me.port)
                } else {
                    format!("{}:{}", me.address, me.port)
                },
                partitions,
                batch_max: config.ingest_batch_max as usize,
                ack_wait: Duration::from_millis(config.ingest_ack_wait_ms),
                view: cell.clone(),
            };
            Some(ingest::start(settings, stop.clone())?)
        } else {
            None
        };
        let (config, flag, seen) = (config.clone(), stop.clone(), view.clone());
        let shipping = Shipping {
            log_dir,
            appended,
            rules,
        };
        let thread = spawn_runtime(
            "verdict-cluster",
            run(config, me, partitions, shipping, flag, seen, cell),
        )?;
        Ok(Member {
            stop,
            thread: Some(thread),
            ingest,
            view,
        })
    }

    /// Leaves the cluster (deletes this node's record) and stops the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ingest.take() {
            let _ = t.join();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the decision stream looks for newly logged records.
const SHIP_TICK: Duration = Duration::from_millis(50);
/// How often when answers wait for their append (`cluster.wait_for_append`).
const SHIP_TICK_WAITED: Duration = Duration::from_millis(1);

/// What the cluster thread ships: the decision log in `log_dir`, telling waiting answers
/// in `appended`.
struct Shipping {
    log_dir: Option<std::path::PathBuf>,
    appended: Option<Appended>,
    /// The rule epoch (its velocity functions' digest goes in this node's record).
    rules: Arc<verdict_rules::epoch::EpochCell<crate::scoring::Published>>,
}

async fn run(
    config: ClusterConfig,
    mut me: NodeInfo,
    partitions: u32,
    shipping_of: Shipping,
    stop: Arc<AtomicBool>,
    view: Arc<Mutex<View>>,
    cell: view::ViewCell,
) {
    let beat = Duration::from_millis(config.heartbeat_ms);
    let ttl = Duration::from_millis(config.node_ttl_ms);
    // When this node's record was last written. The others take its partitions once the
    // record is `ttl` old; this node stops deciding (fenced) well before: a beat that is
    // due, plus one NATS call, before that.
    let mut last_put: Option<Instant> = None;
    let fence_after = ttl
        .saturating_sub(beat + Duration::from_millis(config.request_timeout_ms))
        .max(beat);
    let options = nats_options(&config, format!("verdict node {}", me.node));
    let mut broker = None;
    let mut shipping = None;
    let unshipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut next_try = Instant::now();
    let mut next_beat = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if broker.is_none() && Instant::now() >= next_try {
            match Nats::connect(&options).await {
                Ok(b) => {
                    info!("cluster: node {} connected to NATS", me.node);
                    if let Some(dir) = &shipping_of.log_dir {
                        // Its own task: a backlog or a slow stream never delays a heartbeat.
                        let shipper = ship::Shipper::new(
                            b.client(),
                            &me.node,
                            dir,
                            me.shards(),
                            partitions,
                            options.replicas,
                            options.request_timeout,
                            shipping_of.appended.clone(),
                        );
                        let tick = if shipping_of.appended.is_some() {
                            SHIP_TICK_WAITED
                        } else {
                            SHIP_TICK
                        };
                        shipping = Some(tokio::spawn(ship_loop(
                            shipper,
                            stop.clone(),
                            unshipped.clone(),
                            options.request_timeout,
                            tick,
                        )));
                    }
                    broker = Some(b);
                }
                Err(e) => {
                    warn!("cluster: {e}; retrying");
                    note_error(&view, &e.to_string());
                    next_try = Instant::now() + beat;
                }
            }
        }
        if let Some(b) = &broker
            && Instant::now() >= next_beat
        {
            me.heartbeat_ms = now_ms();
            me.decisions_unshipped = unshipped.load(Ordering::Relaxed);
            me.windows = shipping_of.rules.load().rules.windows_digest().to_string();
            let bound = beat + options.request_timeout;
            let beaten = beat_once(b, &me, partitions, &view, &cell, &mut last_put);
            match tokio::time::timeout(bound, beaten).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!("cluster: {e}");
                    note_error(&view, &e.to_string());
                }
                Err(_) => {
                    warn!("cluster: a heartbeat took over {} ms", bound.as_millis());
                    note_error(&view, "a heartbeat timed out");
                }
            }
            if last_put.is_some_and(|at| at.elapsed() >= fence_after)
                && cell.load().closed.is_none()
            {
                warn!(
                    "cluster: node {}'s record has not been refreshed for {} ms, near \
                     cluster.node_ttl_ms: fenced, every event is refused until one lands",
                    me.node,
                    fence_after.as_millis()
                );
                cell.publish(view::ClusterView::closed(&me.node, view::Closed::Fenced));
            }
            next_beat = Instant::now() + beat;
        }
        tokio::time::sleep(beat.min(Duration::from_millis(50))).await;
    }
    // The shipper sends what was logged before the stop (bounded), then ends.
    if let Some(task) = shipping {
        let bound = options.request_timeout + SHIP_TICK;
        let _ = tokio::time::timeout(bound * 2, task).await;
    }
    if let Some(b) = &broker {
        match b.delete(Bucket::Nodes, &me.node).await {
            Ok(()) => info!("cluster: node {} left the cluster", me.node),
            Err(e) => warn!("cluster: leaving: {e} (the record expires by itself)"),
        }
    }
}

/// The decision stream's task: ships every [`SHIP_TICK`] until the stop, then once more
/// (bounded by `timeout`) so what was logged before it goes out.
async fn ship_loop(
    mut shipper: ship::Shipper,
    stop: Arc<AtomicBool>,
    unshipped: Arc<std::sync::atomic::AtomicU64>,
    timeout: Duration,
    tick: Duration,
) {
    let mut warned = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let shipped = if stopping {
            tokio::time::timeout(timeout, shipper.ship())
                .await
                .unwrap_or_else(|_| Err("the last shipment timed out".into()))
        } else {
            shipper.ship().await
        };
        if let Err(e) = shipped {
            ship::warn_now_and_then(&mut warned, Duration::from_secs(10), &e);
        }
        unshipped.store(shipper.unshipped(), Ordering::Relaxed);
        if stopping {
            return;
        }
        tokio::time::sleep(tick).await;
    }
}

fn note_error(view: &Mutex<View>, message: &str) {
    let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
    v.last_error = Some(message.to_string());
}

/// One heartbeat: the record, then the map (created, or taken from lost nodes).
async fn beat_once(
    broker: &Nats,
    me: &NodeInfo,
    partitions: u32,
    view: &Mutex<View>,
    cell: &view::ViewCell,
    last_put: &mut Option<Instant>,
) -> Result<(), ClusterError> {
    let record = serde_json::to_vec(me).expect("a record serializes");
    let putting = Instant::now();
    if let Err(e) = broker.put(Bucket::Nodes, &me.node, record).await {
        view.lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeats_failed += 1;
        return Err(e.into());
    }
    *last_put = Some(putting);
    let mut live = live_nodes(broker).await?;
    let current = read_map(broker).await?;
    // A listing of the bucket can miss a record being rewritten at that moment: before a
    // map node counts as lost, its record is read on its own.
    if let Some((map, _)) = &current {
        let missing: Vec<&String> = map
            .nodes
            .iter()
            .filter(|n| !live.contains_key(*n))
            .collect();
        for name in missing {
            if let Ok(Some(v)) = broker.get(Bucket::Nodes, name).await
                && let Ok(info) = serde_json::from_slice::<NodeInfo>(&v.value)
            {
                live.insert(name.clone(), info);
            }
        }
    }
    let shards: BTreeMap<String, u32> = live
        .iter()
        .map(|(name, info)| (name.clone(), info.shards()))
        .collect();
    let map = match current {
        None => {
            let first = table::assign(None, partitions, &shards, &[])?;
            let body = serde_json::to_vec(&first).expect("a map serializes");
            match broker.create(Bucket::Cluster, MAP_KEY, body).await {
                Ok(_) => {
                    info!(
                        "cluster: node {} wrote the first partition map over {:?}",
                        me.node, first.nodes
                    );
                    Some(first)
                }
                Err(BrokerError::Conflict) => read_map(broker).await?.map(|(m, _)| m),
                Err(e) => return Err(e.into()),
            }
        }
        Some((map, _)) if map.partitions != partitions => {
            return Err(ClusterError::Partitions {
                map: map.partitions,
                mine: partitions,
            });
        }
        Some((map, revision)) => {
            let lost: Vec<&String> = map
                .nodes
                .iter()
                .filter(|n| !live.contains_key(*n))
                .collect();
            if lost.is_empty() {
                Some(map)
            } else {
                let next = table::failover(&map, &shards)?;
                let body = serde_json::to_vec(&next).expect("a map serializes");
                match broker
                    .update(Bucket::Cluster, MAP_KEY, body, revision)
                    .await
                {
                    Ok(_) => {
                        info!(
                            "cluster: node {} wrote epoch {}: {} partitions moved from {lost:?}",
                            me.node,
                            next.epoch,
                            next.moves_from(&map)
                        );
                        Some(next)
                    }
                    // Another node wrote it first: its map is read next beat.
                    Err(BrokerError::Conflict) => Some(map),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    if let Some(map) = &map {
        let records: Vec<NodeInfo> = live.values().cloned().collect();
        let next = view::ClusterView::of(&me.node, map, &records);
        if !cell.load().same_as(&next) {
            info!(
                "cluster: node {} routes by map epoch {} ({} live nodes)",
                me.node,
                map.epoch,
                records.len()
            );
            cell.publish(next);
        }
    }
    let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
    v.map = map;
    v.live = live.into_keys().collect();
    v.last_error = None;
    Ok(())
}
