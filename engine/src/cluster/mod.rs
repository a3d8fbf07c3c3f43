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
//! State moves with partitions ([`replay`]): a partition this node comes to own is cold
//! (its events refused, error 9) until the node has replayed its history from the event
//! stream; the node marks it warm and routes it then. When its old owner is alive (a
//! rebalance, a drain) that owner decides it meanwhile ([`handoff`]): the new owner
//! replays the history first, then the old one lets go, and only the tail is waited for.

pub mod broker;
pub mod handoff;
pub mod ingest;
pub mod peer;
pub mod replay;
pub mod ship;
pub mod table;
pub mod view;
mod warmth;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use crate::config::ClusterConfig;
use broker::{Broker, BrokerError, Bucket, MAP_KEY, Nats, NatsOptions, Versioned};
use table::{NodeInfo, PartitionMap, TableError};
use warmth::{Warmth, caught_up};

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

/// [`live_nodes`], reading on its own each of `expected` the listing missed before it counts
/// as gone: a listing of the bucket can miss a record being rewritten at that moment (a
/// benchmark once saw a live node failed over that way, and a test an operator's undo of a
/// drain find nothing to move).
pub async fn live_nodes_expecting<'a>(
    broker: &impl Broker,
    expected: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeMap<String, NodeInfo>, BrokerError> {
    let mut live = live_nodes(broker).await?;
    for name in expected {
        if live.contains_key(name) {
            continue;
        }
        if let Some(v) = broker.get(Bucket::Nodes, name).await?
            && let Ok(info) = serde_json::from_slice::<NodeInfo>(&v.value)
            && &info.node == name
        {
            live.insert(name.clone(), info);
        }
    }
    Ok(live)
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
        let Some((map, revision)) = read_map(broker).await? else {
            return Err(ClusterError::NoMap);
        };
        let named = match change {
            Change::Drain { node, .. } => Some(node),
            Change::Rebalance => None,
        };
        let expected = map.nodes.iter().chain(&map.draining).chain(named);
        let live: BTreeMap<String, u32> = live_nodes_expecting(broker, expected)
            .await?
            .into_iter()
            .map(|(name, info)| (name, info.shards()))
            .collect();
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

/// What the cluster thread last saw and where this node stands: what the admin port's
/// `/metrics` shows of the cluster, from this node alone (NATS up or not).
#[derive(Debug, Clone, Default)]
pub struct View {
    pub map: Option<PartitionMap>,
    pub live: Vec<String>,
    /// Heartbeats that could not be written (NATS slow or absent).
    pub heartbeats_failed: u64,
    pub last_error: Option<String>,
    /// When this node's record was last written.
    pub last_put: Option<Instant>,
    /// Decision records logged and not yet in the streams (counted while NATS is away too).
    pub decisions_unshipped: u64,
    /// The map epoch the shards route by; whether they are fenced.
    pub routes_epoch: u64,
    pub fenced: bool,
    /// Partitions cold here, handed off, released (shipping), prepared.
    pub cold: usize,
    pub handing_off: usize,
    pub releasing: usize,
    pub prepared: usize,
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
    /// publishing views in `cell`, shipping and replaying as `shipping` says.
    pub fn start(
        config: &ClusterConfig,
        me: NodeInfo,
        partitions: u32,
        cell: view::ViewCell,
        shipping: Shipping,
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

/// What the cluster thread ships and replays: the decision log in `log_dir` (none: nothing
/// shipped, and partitions move without their history), telling waiting answers in
/// `appended`; history goes to the shards through `feeds`.
pub struct Shipping {
    pub log_dir: Option<std::path::PathBuf>,
    /// The last record each shard's log has written.
    pub logged: Option<Appended>,
    pub appended: Option<Appended>,
    /// The rule epoch (its velocity functions' digest goes in this node's record).
    pub rules: Arc<verdict_rules::epoch::EpochCell<crate::scoring::Published>>,
    /// Each shard's queue for the history replayed into partitions this node takes over.
    pub feeds: Vec<flume::Sender<replay::Job>>,
    /// How long after this node routes by a new map its shards may still decide (and log)
    /// by the one before: a batch's calls to peers, then the log's write.
    pub settle: Duration,
}

/// When this node's shards began routing by each recent map epoch: what the node may claim
/// as shipped ([`NodeInfo::shipped_epoch`]) once `settle` has passed.
#[derive(Default)]
struct Routed {
    since: Vec<(u64, Instant)>,
}

impl Routed {
    fn began(&mut self, epoch: u64) {
        if self.since.last().is_none_or(|&(e, _)| e < epoch) {
            self.since.push((epoch, Instant::now()));
            if self.since.len() > 8 {
                self.since.remove(0);
            }
        }
    }

    /// The latest epoch routed by for at least `settle` (0: none yet).
    fn settled(&self, settle: Duration) -> u64 {
        self.since
            .iter()
            .rev()
            .find(|(_, at)| at.elapsed() >= settle)
            .map_or(0, |&(e, _)| e)
    }
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
    // The latest map epoch routed by for `settle`, and the latest the shipper has shipped
    // everything before (what this node's record says as `shipped_epoch`).
    let settled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let shipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Whether the shipper has reached the end of the log once: what an earlier run of this
    // node logged and did not ship is in the streams before this node replays anything.
    let drained = Arc::new(AtomicBool::new(false));
    // When the latest shipper pass that reached the end of every log began (ms since the
    // Unix epoch): what was logged before it is shipped.
    let shipped_from = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handoffs = handoff::Handoffs::new(
        Duration::from_millis(config.handoff_max_ms),
        shipping_of.settle,
    );
    // Whether this node fenced itself since it last read a map.
    let mut fenced_since_map = false;
    let mut routed = Routed::default();
    let mut warmth = Warmth::new(partitions, shipping_of.log_dir.is_some());
    // The last map and live records read, for publishing a view between beats.
    let mut last: Option<(PartitionMap, Vec<NodeInfo>)> = None;
    let mut caught = None;
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
                            b.streams(),
                            &me.node,
                            dir,
                            me.shards(),
                            partitions,
                            shipping_of.appended.clone(),
                            shipping_of.logged.clone(),
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
                            (settled.clone(), shipped.clone(), drained.clone()),
                            shipped_from.clone(),
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
            let routing = cell.load();
            me.cold_partitions = routing.cold_partitions().len() as u32;
            me.routes_epoch = routing.map_epoch;
            handoffs.write(&mut me);
            me.prepared = warmth.prepared();
            me.shipped_epoch = if shipping.is_some() {
                shipped.load(Ordering::Relaxed)
            } else {
                // Nothing to ship: settled is shipped.
                settled.load(Ordering::Relaxed)
            };
            let bound = beat + options.request_timeout;
            // Nodes handing partitions off or releasing them may be in no map (drained): a
            // listing that misses one must not make its partitions look free.
            let handing: Vec<String> = last.as_ref().map_or(Vec::new(), |(_, records)| {
                records
                    .iter()
                    .filter(|r| !r.handing_off.is_empty() || !r.releasing.is_empty())
                    .map(|r| r.node.clone())
                    .collect()
            });
            let beaten = beat_once(b, &me, partitions, &view, &mut last_put, &handing);
            match tokio::time::timeout(bound, beaten).await {
                Ok(Ok(read)) => {
                    if let Some((map, records)) = read {
                        let old = last.as_ref().map(|(m, _)| m);
                        let ships = shipping.is_some();
                        let began = Instant::now();
                        let unbroken = !std::mem::take(&mut fenced_since_map);
                        let warm = &warmth.warm;
                        handoffs.follow(&me.node, old, &map, &records, warm, ships, unbroken);
                        let from = shipped_from.load(Ordering::Relaxed);
                        handoffs.advance(&me.node, &map, &records, from);
                        let before = (me.handing_off.clone(), me.releasing.clone());
                        handoffs.write(&mut me);
                        if before != (me.handing_off.clone(), me.releasing.clone()) {
                            // The others route by it: said now rather than a beat later.
                            let record = serde_json::to_vec(&me).expect("a record serializes");
                            let put = b.put(Bucket::Nodes, &me.node, record);
                            if let Ok(Ok(_)) = tokio::time::timeout(bound, put).await {
                                last_put = Some(Instant::now());
                            } else {
                                // Said late, a handoff could follow its new owner's serving.
                                handoffs.drop_since(began);
                                handoffs.write(&mut me);
                            }
                        }
                        // This node's record as it is now (the one read back is a beat old).
                        let records: Vec<NodeInfo> = records
                            .into_iter()
                            .map(|r| if r.node == me.node { me.clone() } else { r })
                            .collect();
                        let next = view::ClusterView::of(&me.node, &map, &records);
                        warmth.follow(&next);
                        caught = warmth.finished(Some(&next));
                        if shipping.is_none() || drained.load(Ordering::Relaxed) {
                            warmth.start(
                                &me.node,
                                &next,
                                &records,
                                b,
                                &shipping_of,
                                options.request_timeout,
                                ttl,
                            );
                        }
                        last = Some((map, records));
                    }
                    publish(&cell, &me.node, last.as_ref(), &warmth, &mut routed);
                    handoffs.published(now_ms());
                    if let Some((done, phase)) = caught.take() {
                        caught_up(&me.node, &done, phase);
                    }
                }
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
                // Its record may expire and its partitions be served elsewhere: no handoff
                // may outlive the fence (each is let go, and kept until shipped), nor start
                // from a map read before it.
                handoffs.release_all(now_ms());
                handoffs.write(&mut me);
                fenced_since_map = true;
            }
            next_beat = Instant::now() + beat;
        }
        // A catch-up that ends between beats is served at once.
        if let Some((map, records)) = &last
            && warmth.task.is_some()
        {
            let current = view::ClusterView::of(&me.node, map, records);
            if let Some((done, phase)) = warmth.finished(Some(&current)) {
                // Only a beat that lands lifts a fence: a view published from the records
                // before it would.
                if cell.load().closed != Some(view::Closed::Fenced) {
                    publish(&cell, &me.node, last.as_ref(), &warmth, &mut routed);
                }
                caught_up(&me.node, &done, phase);
            }
        }
        settled.store(routed.settled(shipping_of.settle), Ordering::Relaxed);
        {
            let routing = cell.load();
            let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
            v.last_put = last_put;
            v.decisions_unshipped = unshipped.load(Ordering::Relaxed);
            v.routes_epoch = routing.map_epoch;
            v.fenced = routing.closed == Some(view::Closed::Fenced);
            v.cold = routing.cold_partitions().len();
            v.handing_off = me.handing_off.len();
            v.releasing = me.releasing.len();
            v.prepared = warmth.prepared().len();
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
async fn ship_loop<S: broker::Streams>(
    mut shipper: ship::Shipper<S>,
    stop: Arc<AtomicBool>,
    unshipped: Arc<std::sync::atomic::AtomicU64>,
    (settled, shipped_epoch, drained): (
        Arc<std::sync::atomic::AtomicU64>,
        Arc<std::sync::atomic::AtomicU64>,
        Arc<AtomicBool>,
    ),
    shipped_from: Arc<std::sync::atomic::AtomicU64>,
    timeout: Duration,
    tick: Duration,
) {
    let mut warned = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let began = now_ms();
        // A pass that starts after the shards settled on an epoch and reaches the end of
        // every log has shipped all they decided before it.
        let epoch = settled.load(Ordering::Relaxed);
        let shipped = if stopping {
            tokio::time::timeout(timeout, shipper.ship())
                .await
                .unwrap_or_else(|_| Err("the last shipment timed out".into()))
        } else {
            shipper.ship().await
        };
        match shipped {
            Ok(true) => {
                shipped_epoch.fetch_max(epoch, Ordering::Relaxed);
                shipped_from.fetch_max(began, Ordering::Relaxed);
                drained.store(true, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => ship::warn_now_and_then(&mut warned, Duration::from_secs(10), &e),
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

/// One heartbeat: the record, then the map (created, or taken from lost nodes). Returns the
/// map and the live nodes' records, if there is a map.
async fn beat_once(
    broker: &Nats,
    me: &NodeInfo,
    partitions: u32,
    view: &Mutex<View>,
    last_put: &mut Option<Instant>,
    also_expected: &[String],
) -> Result<Option<(PartitionMap, Vec<NodeInfo>)>, ClusterError> {
    let record = serde_json::to_vec(me).expect("a record serializes");
    let putting = Instant::now();
    if let Err(e) = broker.put(Bucket::Nodes, &me.node, record).await {
        view.lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeats_failed += 1;
        return Err(e.into());
    }
    *last_put = Some(putting);
    let current = read_map(broker).await?;
    let mut expected: Vec<String> = current
        .as_ref()
        .map_or(Vec::new(), |(map, _)| map.nodes.clone());
    expected.extend(also_expected.iter().cloned());
    let live = live_nodes_expecting(broker, &expected).await?;
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
    let records: Vec<NodeInfo> = live.values().cloned().collect();
    let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
    v.map = map.clone();
    v.live = live.into_keys().collect();
    v.last_error = None;
    Ok(map.map(|m| (m, records)))
}

/// Publishes the view of `last` (map and live records) for this node's shards, its cold
/// partitions marked, if it differs from theirs.
fn publish(
    cell: &view::ViewCell,
    me: &str,
    last: Option<&(PartitionMap, Vec<NodeInfo>)>,
    warmth: &Warmth,
    routed: &mut Routed,
) {
    let Some((map, records)) = last else {
        return;
    };
    let next = view::ClusterView::of(me, map, records).with_warm(&warmth.warm);
    let current = cell.load();
    if current.same_as(&next) {
        return;
    }
    if current.map_epoch != next.map_epoch || current.closed.is_some() {
        info!(
            "cluster: node {me} routes by map epoch {} ({} live nodes)",
            map.epoch,
            records.len()
        );
    }
    let cold = next.cold_partitions().len();
    if cold > 0 {
        info!("cluster: node {me} holds {cold} partitions cold until it has caught up");
    }
    cell.publish(next);
    routed.began(map.epoch);
}
