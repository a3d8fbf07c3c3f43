//! The topology file (`shards.toml`): parsed once with serde (unknown keys rejected), checked
//! with messages that name the key, then passed down as plain structs. Command-line flags
//! override the file through the same structs and the same checks.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use verdict_net::Action;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    pub listen: Listen,
    /// One entry per shard, in shard order.
    #[serde(rename = "shard", default)]
    pub shards: Vec<ShardSpec>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub decision: DecisionConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub probes: ProbesConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub log: crate::log::LogConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: this engine as one node of a cluster whose membership and partition map
/// live in NATS JetStream (see [`crate::cluster`]). Off while `urls` is empty.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`), any of which will do.
    pub urls: Vec<String>,
    /// This node's name, unique in the cluster (`[A-Za-z0-9_-]`, at most 64 bytes).
    pub node: String,
    /// The address other nodes and clients reach this node on. "" = `listen.address`.
    pub advertise_address: String,
    /// How often the node refreshes its membership record and checks the partition map.
    pub heartbeat_ms: u64,
    /// A node whose record is this old is gone: its partitions go to the live nodes.
    pub node_ttl_ms: u64,
    /// Replicas of the cluster's JetStream buckets (at most the NATS servers).
    pub replicas: u32,
    /// The longest a NATS call may take.
    pub request_timeout_ms: u64,
    /// Ship the decision log (when `[log] dir` is set) to the replicated stream
    /// `VERDICT_DECISIONS`.
    pub decision_stream: bool,
    /// The longest a shard waits for another node's shard to answer a batch's work
    /// (forwarded events, gathered windows); past it those events are error 9.
    pub peer_reply_timeout_ms: u64,
    /// Connections one shard keeps open to any one shard of another node (calls beyond
    /// them are error 8).
    pub peer_connections_max: u32,
    /// Decide events producers publish to `verdict.input.<partition>` (stream
    /// `VERDICT_INPUT`, shared durable consumer `verdict-ingest`), publishing each decision
    /// to `VERDICT_OUTPUT` before acknowledging its event.
    pub ingest: bool,
    /// Messages one pull takes (decided as one pipelined run).
    pub ingest_batch_max: u32,
    /// How long a pulled message may stay unacknowledged before it is delivered again
    /// (to any node).
    pub ingest_ack_wait_ms: u64,
    /// Answer a decision only once its record is in the replicated streams (needs
    /// `[log] dir`, `log.sync = "always"` and `decision_stream`): a crash then loses no
    /// answered decision, at the cost of a NATS round trip per batch.
    pub wait_for_append: bool,
    /// The longest an answer waits for its append; past it the event is error 9 (it was
    /// decided and logged, and is appended later).
    pub append_timeout_ms: u64,
    /// The longest a node keeps deciding partitions a new map gave another live node
    /// while that node replays their history (a handoff); past it the node lets them go
    /// and their events wait (error 9) until the new owner has caught up.
    pub handoff_max_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            urls: Vec::new(),
            node: String::new(),
            advertise_address: String::new(),
            heartbeat_ms: 1_000,
            node_ttl_ms: 5_000,
            replicas: 3,
            request_timeout_ms: 2_000,
            decision_stream: true,
            peer_reply_timeout_ms: 1_000,
            peer_connections_max: 64,
            ingest: false,
            ingest_batch_max: 256,
            ingest_ack_wait_ms: 30_000,
            wait_for_append: false,
            append_timeout_ms: 250,
            handoff_max_ms: 120_000,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if !crate::cluster::table::valid_node_name(&self.node) {
            return Err(invalid(
                "cluster.node",
                format!(
                    "{:?}: a cluster node needs a name of 1 to 64 of [A-Za-z0-9_-]",
                    self.node
                ),
            ));
        }
        for url in &self.urls {
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid(
                    "cluster.urls",
                    format!("{url:?} is not a NATS URL"),
                ));
            }
        }
        for (key, value, min, max) in [
            ("cluster.heartbeat_ms", self.heartbeat_ms, 10, 60_000),
            ("cluster.node_ttl_ms", self.node_ttl_ms, 100, 600_000),
            (
                "cluster.request_timeout_ms",
                self.request_timeout_ms,
                10,
                60_000,
            ),
            ("cluster.replicas", u64::from(self.replicas), 1, 5),
            (
                "cluster.peer_reply_timeout_ms",
                self.peer_reply_timeout_ms,
                1,
                60_000,
            ),
            (
                "cluster.peer_connections_max",
                u64::from(self.peer_connections_max),
                1,
                1024,
            ),
            (
                "cluster.ingest_batch_max",
                u64::from(self.ingest_batch_max),
                1,
                4096,
            ),
            (
                "cluster.ingest_ack_wait_ms",
                self.ingest_ack_wait_ms,
                100,
                600_000,
            ),
            ("cluster.handoff_max_ms", self.handoff_max_ms, 0, 3_600_000),
            (
                "cluster.append_timeout_ms",
                self.append_timeout_ms,
                1,
                60_000,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("{value} is not in {min}..={max}")));
            }
        }
        if self.node_ttl_ms < 2 * self.heartbeat_ms {
            return Err(invalid(
                "cluster.node_ttl_ms",
                format!(
                    "{} is under two heartbeats (cluster.heartbeat_ms = {}): a live node would \
                     be taken for gone",
                    self.node_ttl_ms, self.heartbeat_ms
                ),
            ));
        }
        Ok(())
    }
}

/// `[routing]`: how key values are placed on shards (see `verdict_net::routing`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Virtual partitions key values are hashed into (`fnv1a64(value) % partitions`); the
    /// partition table gives partition `p` to shard `p % shard_count`. At least the shard
    /// count, at most 65536; fixed for a deployment (changing it moves keys).
    pub partitions: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            partitions: verdict_net::routing::PARTITIONS_DEFAULT,
        }
    }
}

/// `[tls]`: TLS (rustls) on every data port and the admin port, re-read on every reload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM). "" = plaintext (with `key_file` "").
    pub cert_file: String,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Require client certificates signed by this CA (PEM): mutual TLS. "" = no client
    /// certificates.
    pub client_ca_file: String,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

/// `[admin]`: the admin HTTP port: who may read it, who may change the engine through it,
/// and what one client can make it hold.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding the bearer token of the control API (`POST /v1/reload`). "" = none: every
    /// mutating endpoint answers 403. The engine refuses to start if group or others may
    /// read or write the file.
    pub token_file: String,
    /// Also require the token for `/metrics`, `/stats`, `/healthz` and `/readyz`.
    pub token_for_reads: bool,
    /// Keep serving reload requests (kind 0x06) on the data ports, unauthenticated: only for
    /// a trusted network. Off: they get error 11 (forbidden).
    pub wire_reload: bool,
    /// Threads answering admin requests; an admin connection holds one while it is read
    /// and answered (bounded by `read_timeout_ms` and `write_timeout_ms`).
    pub threads: u32,
    /// Admin connections being answered or waiting for a thread; one more is answered 503
    /// and closed at once.
    pub connections_max: u32,
    /// Largest request line plus headers, bytes (over it: 431).
    pub header_bytes_max: u32,
    /// Largest request body, bytes (over it: 413).
    pub body_bytes_max: u32,
    /// A request must arrive whole within this long of its connection being taken up, ms
    /// (else 408 and close): a slow or idle client holds a thread no longer.
    pub read_timeout_ms: u64,
    /// A client that takes none of the response for this long is dropped, ms.
    pub write_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token_file: String::new(),
            token_for_reads: false,
            wire_reload: false,
            threads: 4,
            connections_max: 64,
            header_bytes_max: 16 * 1024,
            body_bytes_max: 64 * 1024,
            read_timeout_ms: 5_000,
            write_timeout_ms: 5_000,
        }
    }
}

/// `[rules]`: where rule sets may come from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// The only directory rules and lists are read from, at start and on every reload; a
    /// reload names a path relative to it. "" = the directory of the rules served at start
    /// (`--rules`); with the built-in rules and no dir, a reload can only re-publish them.
    pub dir: String,
}

/// `[probes]`: the eBPF half of the metrics plane.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Load the default probe groups (run-queue delay, io_uring ops, TCP retransmits,
    /// softirq time). Without privileges they stay off and the engine says why.
    pub enabled: bool,
    /// Also time the engine's syscalls. Off by default: a syscall tracepoint slows every
    /// syscall on the host, not only ours.
    pub syscalls: bool,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            enabled: true,
            syscalls: false,
        }
    }
}

/// `[models]`: the wasm runtime the models run in.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Where precompiled modules are cached. "" = `$XDG_CACHE_HOME/verdict/models` (else
    /// `$HOME/.cache/verdict/models`); "off" = compile in memory every time.
    pub cache_dir: String,
    /// How often the deadline clock ticks, microseconds: a call is cut between its
    /// `deadline_us` and one tick later.
    pub epoch_tick_us: u64,
    /// Largest linear memory one model instance may have, bytes.
    pub memory_bytes_max: u64,
    /// Most rows one model call scores; larger batches are split. Every model must accept it.
    pub rows_per_call_max: u32,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            cache_dir: String::new(),
            epoch_tick_us: 1000,
            memory_bytes_max: 64 << 20,
            rows_per_call_max: 64,
        }
    }
}

impl ModelsConfig {
    /// The runtime settings, with the cache directory resolved.
    pub fn runtime(&self, instance_slots: u32) -> verdict_models::RuntimeConfig {
        let cache_dir = match self.cache_dir.as_str() {
            "off" => None,
            "" => std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache"))
                })
                .map(|c| c.join("verdict").join("models")),
            dir => Some(dir.into()),
        };
        verdict_models::RuntimeConfig {
            cache_dir,
            epoch_tick_us: self.epoch_tick_us,
            memory_bytes_max: self.memory_bytes_max,
            rows_per_call_max: self.rows_per_call_max,
            instance_slots,
        }
    }
}

/// `[listen]`: where clients connect.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub address: IpAddr,
    /// Shared port: every shard accepts on it (SO_REUSEPORT). 0 = pick a free port.
    pub port: u16,
    /// Shard i also listens on `shard_port_base + i`. 0 = each shard picks a free port.
    pub shard_port_base: u16,
    /// Admin HTTP (`/metrics`, `/stats`, `/healthz`, `/readyz`). 0 = a free port. When the
    /// file leaves it out: `port + 80` (7480 beside 7400), or a free port when `port` is 0.
    #[serde(default)]
    pub admin_port: Option<u16>,
    /// HTTP/JSON decisions (`POST /v1/decide`, `/v1/decide/batch`, `GET /v1/topology`),
    /// served by every shard on this port (SO_REUSEPORT, like `port`). 0 = off.
    #[serde(default)]
    pub http_port: u16,
}

impl Listen {
    /// The admin port to bind (0 = any free one).
    pub fn admin_port(&self) -> u16 {
        match self.admin_port {
            Some(port) => port,
            None if self.port == 0 => 0,
            None => self.port.checked_add(80).unwrap_or(0),
        }
    }
}

/// `[[shard]]`: one shard, pinned to one CPU.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    /// OS index of the CPU (processing unit) this shard's thread is pinned to.
    pub cpu: u32,
}

/// `[limits]`: every bound the data path keeps, with its unit in its name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request payload (before padding). A larger header gets error 3 and a close.
    pub frame_len_max_bytes: u32,
    /// Open connections per shard; one more gets error 8 (overloaded) and a close.
    pub connections_per_shard_max: u32,
    /// Requests a connection may have read and not yet answered: after this many the server
    /// writes their responses before it decodes more (the rest wait in the socket: TCP
    /// backpressure, never a drop).
    pub pipeline_depth_max: u32,
    /// Most events in one evaluate-batch request; more gets error 7.
    pub batch_events_max: u32,
    /// Response bytes a connection may queue before the server must write them out; a slow
    /// reader then stops being read (backpressure), so memory per connection stays bounded.
    pub write_buffer_bytes_max: u32,
    /// Receive buffer per connection; it grows only to fit one frame up to
    /// `frame_len_max_bytes` and shrinks back once drained.
    pub read_buffer_bytes: u32,
    /// Response buffer a batch starts with (taken from the shard's pool while answers wait
    /// to be written; an idle connection holds none).
    pub write_buffer_bytes: u32,
    /// All connection buffers of one shard together (receive and response, reserved and
    /// grown): a connection whose base buffers do not fit is refused (error 8), a frame
    /// that cannot be given room closes its connection (error 8).
    pub connection_memory_bytes_max: u64,
    /// A frame must arrive whole within this long of its first byte, else the connection is
    /// closed (the frame was never accepted: no answer is owed).
    pub frame_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed. 0 = never.
    pub idle_timeout_ms: u64,
    /// A peer that accepts none of our response bytes for this long is closed.
    pub write_timeout_ms: u64,
    /// On SIGINT/SIGTERM: how long connections may keep being answered before the shard
    /// exits anyway.
    pub shutdown_drain_ms: u64,
    /// While draining, a connection quiet for this long is considered done.
    pub shutdown_quiet_ms: u64,
    /// Messages queued per pair of shards on the cross-shard channel mesh.
    pub mesh_queue_depth: u32,
    /// Events one shard may have waiting on another (forwarded to it to decide, or sent to
    /// it to record a device's, IP's or merchant's windows); events past it get error 8.
    pub mesh_events_in_flight_max: u32,
    /// How long a shard waits for another to answer a cross-shard request (stats, a
    /// forwarded event, the windows of a key it owns); past it the events get error 9.
    pub mesh_reply_timeout_ms: u64,
    /// Entities of each velocity key (accounts, devices, IPs, merchants) tracked per shard,
    /// shared by the functions of that key; a new one past this evicts the least recently
    /// seen of a small sample.
    pub velocity_entities_max: u32,
    /// How long a `reload` request waits for the control thread to compile and publish.
    pub reload_timeout_ms: u64,
    /// HTTP port: most bytes of one request's line and headers; more gets 431 and a close.
    pub http_header_bytes_max: u32,
    /// HTTP port: most bytes of one request's body; more gets 413 and a close. The events in
    /// it must also fit `frame_len_max_bytes` once encoded (else 413, error 3).
    pub http_body_bytes_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_len_max_bytes: 1 << 20,
            connections_per_shard_max: 1024,
            pipeline_depth_max: 256,
            batch_events_max: 1024,
            write_buffer_bytes_max: 256 * 1024,
            read_buffer_bytes: 16 * 1024,
            write_buffer_bytes: 16 * 1024,
            connection_memory_bytes_max: 256 << 20,
            frame_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            write_timeout_ms: 30_000,
            shutdown_drain_ms: 5_000,
            shutdown_quiet_ms: 200,
            mesh_queue_depth: 1024,
            mesh_events_in_flight_max: 65_536,
            mesh_reply_timeout_ms: 1_000,
            velocity_entities_max: 65_536,
            reload_timeout_ms: 60_000,
            http_header_bytes_max: 8 * 1024,
            http_body_bytes_max: 2 << 20,
        }
    }
}

/// `[decision]`: what the rules leave to the engine.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// The action when the rule set has no `policy` and no fired rule has an action.
    #[serde(with = "action_text")]
    pub default_action: Action,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            default_action: Action::Allow,
        }
    }
}

/// `[runtime]`: the per-core executor.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Memory glommio registers with io_uring per executor, bytes. 0 = choose: 10 MiB when
    /// locked memory is unlimited (root / CAP_IPC_LOCK), else what fits RLIMIT_MEMLOCK.
    pub io_memory_bytes: u64,
    /// Bind each shard's memory to the NUMA node of its CPU (hwloc).
    pub bind_memory: bool,
    /// How often each shard checks for shutdown, milliseconds.
    pub tick_ms: u64,
    /// An idle shard keeps polling this long before it parks in the kernel, microseconds.
    /// Parking and being woken costs an interrupt (an expensive one in a VM) per quiet gap;
    /// spinning trades CPU time on an otherwise idle core for lower latency. 0 = park at once.
    pub spin_before_park_us: u64,
    /// How often each shard sends its stats snapshot to the control thread (what `/metrics`
    /// and `/stats` show), milliseconds.
    pub stats_interval_ms: u64,
    /// A task that runs longer than this between two yields counts as a stall, microseconds.
    pub stall_threshold_us: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            io_memory_bytes: 0,
            bind_memory: true,
            tick_ms: 10,
            spin_before_park_us: 0,
            stats_interval_ms: 1000,
            stall_threshold_us: 1000,
        }
    }
}

mod action_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use verdict_net::Action;

    pub fn serialize<S: Serializer>(action: &Action, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(action.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let text = String::deserialize(d)?;
        Action::parse(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown action {text:?}: expected allow, review or deny"
            ))
        })
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl TopologyConfig {
    /// The topology used when no file is given and none is in the working directory: every
    /// CPU in `cpus` gets a shard, listening on 127.0.0.1:7400 and 7410+i.
    pub fn for_cpus(cpus: &[u32]) -> TopologyConfig {
        TopologyConfig {
            listen: Listen {
                address: IpAddr::from([127, 0, 0, 1]),
                port: 7400,
                shard_port_base: 7410,
                admin_port: Some(7480),
                http_port: 7490,
            },
            shards: cpus.iter().map(|&cpu| ShardSpec { cpu }).collect(),
            models: ModelsConfig::default(),
            limits: Limits::default(),
            decision: DecisionConfig::default(),
            runtime: RuntimeConfig::default(),
            probes: ProbesConfig::default(),
            admin: AdminConfig::default(),
            rules: RulesConfig::default(),
            tls: TlsConfig::default(),
            routing: RoutingConfig::default(),
            log: crate::log::LogConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }

    pub fn parse(text: &str, path: &str) -> Result<TopologyConfig, ConfigError> {
        let config: TopologyConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<TopologyConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        TopologyConfig::parse(&text, &shown)
    }

    /// Checks that do not need the hardware.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.shards.is_empty() {
            return Err(invalid("shard", "at least one [[shard]] is required"));
        }
        if self.shards.len() > 1024 {
            return Err(invalid("shard", "at most 1024 shards"));
        }
        for (i, s) in self.shards.iter().enumerate() {
            if self.shards[..i].iter().any(|o| o.cpu == s.cpu) {
                return Err(invalid(
                    format!("shard[{i}].cpu"),
                    format!("cpu {} already has a shard; one shard per cpu", s.cpu),
                ));
            }
        }
        let base = self.listen.shard_port_base;
        if base != 0 {
            let last = u32::from(base) + self.shards.len() as u32 - 1;
            if last > u32::from(u16::MAX) {
                return Err(invalid(
                    "listen.shard_port_base",
                    format!("{base} + {} shards runs past port 65535", self.shards.len()),
                ));
            }
            let port = u32::from(self.listen.port);
            if self.listen.port != 0 && (u32::from(base)..=last).contains(&port) {
                return Err(invalid(
                    "listen.port",
                    format!("{port} collides with the shard ports {base}..={last}"),
                ));
            }
        }
        self.limits.check()?;
        self.cluster.check()?;
        // An answer waiting for its append may itself be a forwarded event's, whose origin
        // waits mesh_reply_timeout_ms (a cross-node one peer_reply_timeout_ms, inner calls
        // half of it): the inner wait must end first.
        let peer = self.cluster.peer_reply_timeout_ms;
        let mesh = self.limits.mesh_reply_timeout_ms;
        if self.cluster.wait_for_append
            && (self.cluster.append_timeout_ms * 2 > mesh
                || self.cluster.append_timeout_ms * 4 > peer)
        {
            return Err(invalid(
                "cluster.append_timeout_ms",
                format!(
                    "{} ms: an answer's wait for its append must end before the waits around \
                     it: at most half of limits.mesh_reply_timeout_ms ({mesh}) and a quarter of \
                     cluster.peer_reply_timeout_ms ({peer})",
                    self.cluster.append_timeout_ms
                ),
            ));
        }
        // (`[log] dir`, which `--log-dir` may give, is checked when serving.)
        if self.cluster.wait_for_append
            && (!self.cluster.decision_stream || self.log.sync != crate::log::Sync::Always)
        {
            return Err(invalid(
                "cluster.wait_for_append",
                "needs a node that ships its decision log (cluster.decision_stream = true, \
                 [log] dir set) with log.sync = \"always\""
                    .to_string(),
            ));
        }
        if self.cluster.enabled() {
            // Other nodes and clients connect to what this node advertises.
            let (key, address) = if self.cluster.advertise_address.is_empty() {
                ("listen.address", self.listen.address.to_string())
            } else {
                (
                    "cluster.advertise_address",
                    self.cluster.advertise_address.clone(),
                )
            };
            match address.parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => {}
                _ => {
                    return Err(invalid(
                        key,
                        format!(
                            "{address:?}: a cluster node advertises an IP address other nodes \
                             can connect to (set cluster.advertise_address when listening on \
                             every address)"
                        ),
                    ));
                }
            }
        }
        if self.cluster.enabled() && self.tls.enabled() {
            return Err(invalid(
                "cluster.urls",
                "a cluster node cannot serve [tls] yet: nodes forward events to each other's \
                 shard ports in plaintext"
                    .to_string(),
            ));
        }
        let log = &self.log;
        for (key, value, min, max) in [
            ("log.sync_interval_ms", log.sync_interval_ms, 1, 60_000),
            (
                "log.segment_bytes_max",
                log.segment_bytes_max,
                1 << 16,
                1 << 40,
            ),
            (
                "log.buffer_bytes_max",
                log.buffer_bytes_max,
                1 << 16,
                1 << 34,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("{value} is not in {min}..={max}")));
            }
        }
        let partitions = self.routing.partitions;
        if !(self.shards.len() as u32..=verdict_net::routing::PARTITIONS_MAX).contains(&partitions)
        {
            return Err(invalid(
                "routing.partitions",
                format!(
                    "{partitions} is not in {}..={} (at least one partition per shard)",
                    self.shards.len(),
                    verdict_net::routing::PARTITIONS_MAX
                ),
            ));
        }
        if self.runtime.tick_ms == 0 || self.runtime.tick_ms > 1_000 {
            return Err(invalid("runtime.tick_ms", "must be 1..=1000"));
        }
        if !(10..=60_000).contains(&self.runtime.stats_interval_ms) {
            return Err(invalid("runtime.stats_interval_ms", "must be 10..=60000"));
        }
        if !(1..=10_000_000).contains(&self.runtime.stall_threshold_us) {
            return Err(invalid(
                "runtime.stall_threshold_us",
                "must be 1..=10000000",
            ));
        }
        // The admin port left out is port + 80, and must not collide either.
        let admin = self.listen.admin_port();
        let shard_ports = u32::from(base)..u32::from(base) + self.shards.len() as u32;
        let taken =
            self.listen.port == admin || (base != 0 && shard_ports.contains(&u32::from(admin)));
        if admin != 0 && taken {
            let defaulted = match self.listen.admin_port {
                Some(_) => "",
                None => " (port + 80, as admin_port is left out)",
            };
            return Err(invalid(
                "listen.admin_port",
                format!("{admin}{defaulted} collides with the shared or a shard port"),
            ));
        }
        let http = self.listen.http_port;
        let http_taken = http == self.listen.port
            || http == admin
            || (base != 0 && shard_ports.contains(&u32::from(http)));
        if http != 0 && http_taken {
            return Err(invalid(
                "listen.http_port",
                format!("{http} collides with the shared, a shard or the admin port"),
            ));
        }
        if self.runtime.spin_before_park_us > 1_000_000 {
            return Err(invalid(
                "runtime.spin_before_park_us",
                "must be at most 1000000",
            ));
        }
        let m = &self.models;
        if !(10..=100_000).contains(&m.epoch_tick_us) {
            return Err(invalid("models.epoch_tick_us", "must be 10..=100000"));
        }
        if !((1 << 16)..=(4u64 << 30)).contains(&m.memory_bytes_max) {
            return Err(invalid(
                "models.memory_bytes_max",
                "must be 65536..=4294967296 (one wasm page to 4 GiB)",
            ));
        }
        if !(1..=4096).contains(&m.rows_per_call_max) {
            return Err(invalid("models.rows_per_call_max", "must be 1..=4096"));
        }
        self.admin.check()?;
        let t = &self.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            return Err(invalid(
                "tls.cert_file",
                "tls.cert_file and tls.key_file go together: both (TLS) or neither (plaintext)",
            ));
        }
        if !t.client_ca_file.is_empty() && t.cert_file.is_empty() {
            return Err(invalid(
                "tls.client_ca_file",
                "client certificates need TLS: set tls.cert_file and tls.key_file too",
            ));
        }
        Ok(())
    }
}

impl AdminConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let a = self;
        let ranges: [(&str, u64, u64, u64); 6] = [
            ("threads", a.threads.into(), 1, 64),
            ("connections_max", a.connections_max.into(), 1, 65_536),
            ("header_bytes_max", a.header_bytes_max.into(), 1024, 1 << 20),
            ("body_bytes_max", a.body_bytes_max.into(), 0, 16 << 20),
            ("read_timeout_ms", a.read_timeout_ms, 1, 600_000),
            ("write_timeout_ms", a.write_timeout_ms, 1, 600_000),
        ];
        for (name, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    format!("admin.{name}"),
                    format!("{value} is not in {min}..={max}"),
                ));
            }
        }
        if a.connections_max < a.threads {
            return Err(invalid(
                "admin.connections_max",
                format!(
                    "{} is below admin.threads ({}): a thread would never get work",
                    a.connections_max, a.threads
                ),
            ));
        }
        if a.token_for_reads && a.token_file.is_empty() {
            return Err(invalid(
                "admin.token_for_reads",
                "needs admin.token_file: there is no token to require",
            ));
        }
        Ok(())
    }
}

impl Limits {
    fn check(&self) -> Result<(), ConfigError> {
        let l = self;
        let ranges: [(&str, u64, u64, u64); 20] = [
            (
                "frame_len_max_bytes",
                l.frame_len_max_bytes.into(),
                16,
                64 << 20,
            ),
            (
                "connections_per_shard_max",
                l.connections_per_shard_max.into(),
                1,
                1 << 20,
            ),
            (
                "pipeline_depth_max",
                l.pipeline_depth_max.into(),
                1,
                1 << 16,
            ),
            ("batch_events_max", l.batch_events_max.into(), 1, 1 << 16),
            (
                "write_buffer_bytes_max",
                l.write_buffer_bytes_max.into(),
                4096,
                256 << 20,
            ),
            (
                "read_buffer_bytes",
                l.read_buffer_bytes.into(),
                4096,
                64 << 20,
            ),
            (
                "write_buffer_bytes",
                l.write_buffer_bytes.into(),
                1024,
                64 << 20,
            ),
            (
                "connection_memory_bytes_max",
                l.connection_memory_bytes_max,
                1 << 20,
                1 << 40,
            ),
            ("frame_timeout_ms", l.frame_timeout_ms, 1, 3_600_000),
            ("idle_timeout_ms", l.idle_timeout_ms, 0, 86_400_000),
            ("write_timeout_ms", l.write_timeout_ms, 1, 3_600_000),
            ("shutdown_drain_ms", l.shutdown_drain_ms, 1, 600_000),
            ("shutdown_quiet_ms", l.shutdown_quiet_ms, 1, 60_000),
            ("mesh_queue_depth", l.mesh_queue_depth.into(), 1, 1 << 20),
            (
                "mesh_events_in_flight_max",
                l.mesh_events_in_flight_max.into(),
                1,
                1 << 24,
            ),
            ("mesh_reply_timeout_ms", l.mesh_reply_timeout_ms, 1, 60_000),
            (
                "velocity_entities_max",
                l.velocity_entities_max.into(),
                1,
                1 << 24,
            ),
            ("reload_timeout_ms", l.reload_timeout_ms, 1, 600_000),
            (
                "http_header_bytes_max",
                l.http_header_bytes_max.into(),
                256,
                1 << 20,
            ),
            (
                "http_body_bytes_max",
                l.http_body_bytes_max.into(),
                1024,
                256 << 20,
            ),
        ];
        for (name, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    format!("limits.{name}"),
                    format!("{value} is not in {min}..={max}"),
                ));
            }
        }
        if l.write_buffer_bytes > l.write_buffer_bytes_max {
            return Err(invalid(
                "limits.write_buffer_bytes",
                format!(
                    "{} is over limits.write_buffer_bytes_max ({})",
                    l.write_buffer_bytes, l.write_buffer_bytes_max
                ),
            ));
        }
        let base = u64::from(l.read_buffer_bytes) + u64::from(l.write_buffer_bytes);
        if base > l.connection_memory_bytes_max {
            return Err(invalid(
                "limits.connection_memory_bytes_max",
                format!(
                    "{} cannot hold one connection's base buffers ({base} bytes)",
                    l.connection_memory_bytes_max
                ),
            ));
        }
        Ok(())
    }
}

/// The header `verdict topology --write` puts on a file (and the repository's shards.toml).
pub const FILE_HEADER: &str = "# verdict topology: one shard per data core.\n\
    # `verdict topology` shows this machine and the shard map;\n\
    # `verdict topology --write FILE` writes a file like this one for the machine it runs on.\n";

/// Renders a commented topology file for `config` (used by `verdict topology --write` and to
/// produce the repository's `shards.toml`).
pub fn render(config: &TopologyConfig, header: &str) -> String {
    let l = &config.limits;
    let mut out = String::new();
    out.push_str(header);
    out.push_str(&format!(
        r#"
[listen]
# Address every listener binds (IPv4 or IPv6).
address = "{address}"
# Shared port: every shard accepts on it (SO_REUSEPORT; the kernel spreads connections).
# 0 picks a free port (printed in the ready line).
port = {port}
# Shard i also listens alone on shard_port_base + i, for shard-aware clients.
# 0 lets every shard pick a free port.
shard_port_base = {base}
# Admin HTTP: /metrics (Prometheus), /stats (JSON), /healthz, /readyz. Served off the data
# cores. 0 picks a free port (printed in the ready line). Left out: port + 80, or a free
# port when port is 0.
admin_port = {admin}
# HTTP/JSON decisions on every shard (SO_REUSEPORT): POST /v1/decide, POST /v1/decide/batch,
# GET /v1/topology; keep-alive and pipelining. 0 = off.
http_port = {http}
"#,
        address = config.listen.address,
        port = config.listen.port,
        base = config.listen.shard_port_base,
        admin = config.listen.admin_port(),
        http = config.listen.http_port,
    ));
    out.push_str(
        "\n# One [[shard]] per data core, in shard order. `cpu` is the OS index of the CPU the\n\
         # shard's thread is pinned to; it must exist (see `verdict topology`).\n",
    );
    for s in &config.shards {
        out.push_str(&format!("[[shard]]\ncpu = {}\n", s.cpu));
    }
    out.push_str(&format!(
        r#"
[limits]
# Largest request payload in bytes (before padding). Over it: error 3, then close.
frame_len_max_bytes = {frame}
# Open connections per shard. One more gets error 8 (overloaded), then close.
connections_per_shard_max = {conns}
# Requests read from one connection before their responses must be written; the rest wait
# in the socket (TCP backpressure), never dropped.
pipeline_depth_max = {depth}
# Most events in one evaluate-batch request. More: error 7.
batch_events_max = {batch}
# Response bytes queued per connection before they must be written (slow readers stop
# being read rather than growing this).
write_buffer_bytes_max = {wbuf}
# Receive buffer per connection in bytes; grows only to fit one frame, shrinks back.
read_buffer_bytes = {rbuf}
# Response buffer a batch starts with (bytes), from the shard's pool while answers wait to be
# written; an idle connection holds none.
write_buffer_bytes = {wbase}
# All connection buffers of one shard together (bytes). A connection whose base buffers do
# not fit is refused with error 8; a frame that cannot be given room gets error 8 and a close.
connection_memory_bytes_max = {conn_mem}
# A frame must arrive whole within this long (ms) of its first byte, else the connection is
# closed (slow or stalled peers cannot hold a slot).
frame_timeout_ms = {frame_to}
# Close a connection silent for this long (ms). 0 = never.
idle_timeout_ms = {idle}
# Close a peer that takes none of our bytes for this long (ms).
write_timeout_ms = {wto}
# On SIGINT/SIGTERM: the longest time (ms) in-flight connections are still answered.
shutdown_drain_ms = {drain}
# While draining, a connection quiet for this long (ms) is done.
shutdown_quiet_ms = {quiet}
# Messages queued between each pair of shards on the cross-shard mesh.
mesh_queue_depth = {mesh}
# Events one shard may have waiting on another (forwarded to their account's owner, or sent
# to record a device's, IP's or merchant's windows). Past it: error 8 for those events.
mesh_events_in_flight_max = {mesh_events}
# How long (ms) a shard waits for another to answer (stats, a forwarded event, a key's
# windows). Past it: error 9 for those events.
mesh_reply_timeout_ms = {mesh_to}
# Entities (accounts, devices, IPs, merchants) each velocity function tracks per shard.
# A new one past this evicts the least recently seen of a small random sample. Memory per
# function and shard: about this many x 200 B (count), 330 B (sum), 590 B (distinct).
velocity_entities_max = {entities}
# How long (ms) a `verdict reload` waits for the new rule set to compile and publish.
reload_timeout_ms = {reload_to}
# HTTP port: most bytes of a request's line and headers (more: 431, then close).
http_header_bytes_max = {http_head}
# HTTP port: most bytes of a request's body (more: 413, then close). Its events must also
# fit frame_len_max_bytes once encoded (more: 413, error 3).
http_body_bytes_max = {http_body}

[decision]
# The action when the rule set has no `policy` and no fired rule has an action.
default_action = "{action}"

[runtime]
# Bytes glommio registers with io_uring per executor. 0 = 10 MiB when locked memory is
# unlimited (root / CAP_IPC_LOCK), else the most that fits RLIMIT_MEMLOCK.
io_memory_bytes = {iomem}
# Bind each shard's memory to its CPU's NUMA node (hwloc).
bind_memory = {bind}
# How often (ms) each shard checks for shutdown.
tick_ms = {tick}
# An idle shard polls this long (us) before parking in the kernel; 0 = park at once.
# Spinning burns an idle core to save the wake-up interrupt on the next request.
spin_before_park_us = {spin}
# How often (ms) each shard sends its stats snapshot to the control thread: how fresh
# /metrics and /stats are. (`verdict stats` asks the shards directly.)
stats_interval_ms = {stats_every}
# A task running longer than this (us) between two yields is a stall: counted per shard.
stall_threshold_us = {stall}

[models]
# Where compiled models are cached (a reload of an unchanged module then maps the cached
# code instead of compiling). "" = $XDG_CACHE_HOME/verdict/models or ~/.cache/verdict/models;
# "off" = compile in memory every time.
cache_dir = {cache}
# The deadline clock's tick (us): a model call is cut between its deadline_us and one tick
# later. A shorter tick wakes the ticker thread more often (100 us cost ~15% of
# unpipelined throughput on a 2-core VM).
epoch_tick_us = {etick}
# Largest linear memory one model instance may grow to (bytes).
memory_bytes_max = {wmem}
# Most rows (events) one model call scores; larger batches are split. Every model must accept
# a batch this large (checked when it loads).
rows_per_call_max = {rows}

[probes]
# eBPF probes: run-queue delay of the engine's threads, their io_uring submissions and
# completions, TCP retransmits and softirq time per CPU. Needs root or CAP_BPF+CAP_PERFMON
# (and BTF); without them the engine says why and serves without.
enabled = {probes}
# Also a syscall latency histogram for the engine's threads. Off by default: any syscall
# tracepoint slows every syscall on the host.
syscalls = {syscalls}

[admin]
# Bearer token file for the control API (POST /v1/reload on the admin port). "" = none:
# every mutating endpoint answers 403. Must be readable by its owner only (chmod 600).
token_file = {token}
# Also require the token for /metrics, /stats, /healthz and /readyz.
token_for_reads = {token_reads}
# Serve reload requests (kind 0x06) on the data ports, unauthenticated. Only on a trusted
# network; off, they get error 11 (forbidden).
wire_reload = {wire_reload}
# Threads answering admin requests.
threads = {admin_threads}
# Admin connections answered or waiting at once; one more gets 503 and is closed.
connections_max = {admin_conns}
# Largest request line + headers (bytes; over it: 431) and body (bytes; over it: 413).
header_bytes_max = {admin_header}
body_bytes_max = {admin_body}
# A request must arrive whole within this long (ms; else 408); a client that takes none of
# the response for this long (ms) is dropped.
read_timeout_ms = {admin_read}
write_timeout_ms = {admin_write}

[rules]
# The only directory rules and lists are read from (at start and on reload; a reload names
# a path relative to it). "" = the directory of the rules given with --rules.
dir = {rules_dir}

[tls]
# TLS (rustls) on every data port and the admin port: the certificate chain and its key (PEM).
# "" = plaintext. Re-read on every reload.
cert_file = {tls_cert}
key_file = {tls_key}
# Require client certificates signed by this CA (PEM): mutual TLS. "" = none required.
client_ca_file = {tls_ca}

[routing]
# Virtual partitions key values (account, device, IP, merchant) are hashed into:
# partition = fnv1a64(value bytes) % partitions; partition p belongs to shard
# p % shard_count. The account's owner decides an event; each key's owner keeps its
# windows. At least the shard count, at most 65536; changing it moves every key.
partitions = {partitions}

[log]
# The decision log: every decision with its event, per shard, under this directory.
# "" = off (`verdict serve --log-dir DIR` turns it on).
dir = {log_dir}
# "off": never fsync; "interval": every sync_interval_ms; "always": a batch's answers leave
# only after its records are on disk (group commit).
sync = "{log_sync}"
sync_interval_ms = {log_interval}
# A segment is closed, and the next begun, once a write takes it past this size (bytes).
segment_bytes_max = {log_segment}
# Delete a shard's oldest closed segments past this many bytes, or older than this many
# hours. 0 = keep everything.
retention_bytes_max = {log_keep_bytes}
retention_hours_max = {log_keep_hours}
# Records waiting to be written per shard (bytes); past it, on_write_error applies.
buffer_bytes_max = {log_buffer}
# A decision whose record cannot be written: "answer" it anyway (counted as unlogged) or
# "refuse" it with error 9 (its answer then waits for the write).
on_write_error = "{log_on_error}"

[cluster]
# This engine as a node of a cluster: membership and the partition map live in NATS
# JetStream key-value buckets (replicated, changed by compare-and-set). Empty urls = no
# cluster. `verdict serve --cluster URLS --node NAME` sets both.
urls = {cluster_urls}
# This node's name, unique in the cluster: 1 to 64 of [A-Za-z0-9_-].
node = {cluster_node}
# The address other nodes and clients reach this node on. "" = listen.address.
advertise_address = {cluster_address}
# How often (ms) the node refreshes its membership record and checks the partition map.
heartbeat_ms = {cluster_heartbeat}
# A node silent this long (ms) is gone: its partitions go to the live nodes.
node_ttl_ms = {cluster_ttl}
# Replicas of the cluster's JetStream buckets (at most the NATS servers; 3 for a real cluster).
replicas = {cluster_replicas}
# The longest (ms) one NATS call may take.
request_timeout_ms = {cluster_timeout}
# Ship the decision log (needs [log] dir) to the replicated JetStream stream
# VERDICT_DECISIONS, one subject per node and shard, each record once.
decision_stream = {cluster_stream}
# The longest (ms) a shard waits for another node's shard to answer a batch's forwarded
# events and gathered windows; past it those events are error 9 (unavailable).
peer_reply_timeout_ms = {cluster_peer_timeout}
# Connections one shard keeps to any one shard of another node; beyond them, error 8.
peer_connections_max = {cluster_peer_links}
# Streaming ingestion: decide the events producers publish to verdict.input.<partition>
# (stream VERDICT_INPUT, shared durable consumer verdict-ingest), publish each decision to
# VERDICT_OUTPUT (message id = event id), then acknowledge the event.
ingest = {cluster_ingest}
# Messages one pull takes, decided as one pipelined run.
ingest_batch_max = {cluster_ingest_batch}
# How long (ms) a pulled event may stay unacknowledged before it is delivered again.
ingest_ack_wait_ms = {cluster_ingest_wait}
# Answer a decision only once its record is in the replicated streams (needs [log] dir,
# log.sync = "always" and decision_stream): a crash loses no answered decision, for a NATS
# round trip per batch.
wait_for_append = {cluster_wait_append}
# The longest (ms) an answer waits for its append; past it the event is error 9.
append_timeout_ms = {cluster_append_timeout}
# The longest (ms) a node keeps deciding partitions a rebalance or drain gave another live
# node while that node replays their history (a handoff); 0: no handoffs (their events wait,
# error 9, for the whole replay).
handoff_max_ms = {cluster_handoff_max}
"#,
        tls_cert = toml::Value::String(config.tls.cert_file.clone()),
        tls_key = toml::Value::String(config.tls.key_file.clone()),
        tls_ca = toml::Value::String(config.tls.client_ca_file.clone()),
        partitions = config.routing.partitions,
        log_dir = toml::Value::String(config.log.dir.clone()),
        log_sync = match config.log.sync {
            crate::log::Sync::Off => "off",
            crate::log::Sync::Interval => "interval",
            crate::log::Sync::Always => "always",
        },
        log_interval = config.log.sync_interval_ms,
        log_segment = config.log.segment_bytes_max,
        log_keep_bytes = config.log.retention_bytes_max,
        log_keep_hours = config.log.retention_hours_max,
        log_buffer = config.log.buffer_bytes_max,
        cluster_urls = toml::Value::Array(
            config
                .cluster
                .urls
                .iter()
                .map(|u| toml::Value::String(u.clone()))
                .collect()
        ),
        cluster_node = toml::Value::String(config.cluster.node.clone()),
        cluster_address = toml::Value::String(config.cluster.advertise_address.clone()),
        cluster_heartbeat = config.cluster.heartbeat_ms,
        cluster_ttl = config.cluster.node_ttl_ms,
        cluster_replicas = config.cluster.replicas,
        cluster_timeout = config.cluster.request_timeout_ms,
        cluster_stream = config.cluster.decision_stream,
        cluster_peer_timeout = config.cluster.peer_reply_timeout_ms,
        cluster_peer_links = config.cluster.peer_connections_max,
        cluster_ingest = config.cluster.ingest,
        cluster_ingest_batch = config.cluster.ingest_batch_max,
        cluster_ingest_wait = config.cluster.ingest_ack_wait_ms,
        cluster_wait_append = config.cluster.wait_for_append,
        cluster_append_timeout = config.cluster.append_timeout_ms,
        cluster_handoff_max = config.cluster.handoff_max_ms,
        log_on_error = match config.log.on_write_error {
            crate::log::OnWriteError::Answer => "answer",
            crate::log::OnWriteError::Refuse => "refuse",
        },
        token = toml::Value::String(config.admin.token_file.clone()),
        token_reads = config.admin.token_for_reads,
        wire_reload = config.admin.wire_reload,
        admin_threads = config.admin.threads,
        admin_conns = config.admin.connections_max,
        admin_header = config.admin.header_bytes_max,
        admin_body = config.admin.body_bytes_max,
        admin_read = config.admin.read_timeout_ms,
        admin_write = config.admin.write_timeout_ms,
        rules_dir = toml::Value::String(config.rules.dir.clone()),
        probes = config.probes.enabled,
        syscalls = config.probes.syscalls,
        stats_every = config.runtime.stats_interval_ms,
        stall = config.runtime.stall_threshold_us,
        // A TOML string (Rust's `{:?}` escapes are not TOML's: `\u{1}`).
        cache = toml::Value::String(config.models.cache_dir.clone()),
        etick = config.models.epoch_tick_us,
        wmem = config.models.memory_bytes_max,
        rows = config.models.rows_per_call_max,
        frame = l.frame_len_max_bytes,
        conns = l.connections_per_shard_max,
        depth = l.pipeline_depth_max,
        batch = l.batch_events_max,
        wbuf = l.write_buffer_bytes_max,
        rbuf = l.read_buffer_bytes,
        wbase = l.write_buffer_bytes,
        conn_mem = l.connection_memory_bytes_max,
        frame_to = l.frame_timeout_ms,
        idle = l.idle_timeout_ms,
        wto = l.write_timeout_ms,
        drain = l.shutdown_drain_ms,
        quiet = l.shutdown_quiet_ms,
        mesh = l.mesh_queue_depth,
        mesh_events = l.mesh_events_in_flight_max,
        mesh_to = l.mesh_reply_timeout_ms,
        entities = l.velocity_entities_max,
        reload_to = l.reload_timeout_ms,
        http_head = l.http_header_bytes_max,
        http_body = l.http_body_bytes_max,
        action = config.decision.default_action.as_str(),
        iomem = config.runtime.io_memory_bytes,
        bind = config.runtime.bind_memory,
        tick = config.runtime.tick_ms,
        spin = config.runtime.spin_before_park_us,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
address = "127.0.0.1"
port = 7400
shard_port_base = 7410
[[shard]]
cpu = 0
[[shard]]
cpu = 1
"#;

    #[test]
    fn a_cluster_needs_a_node_name_urls_and_a_ttl_over_two_heartbeats() {
        let with =
            |extra: &str| TopologyConfig::parse(&format!("{MINIMAL}[cluster]\n{extra}"), "t.toml");
        assert!(!with("").unwrap().cluster.enabled());
        let ok = with("urls = [\"nats://127.0.0.1:4222\"]\nnode = \"n-1\"").unwrap();
        assert_eq!((ok.cluster.heartbeat_ms, ok.cluster.replicas), (1000, 3));
        for (extra, key) in [
            ("urls = [\"nats://a:1\"]", "cluster.node"),
            ("urls = [\"nats://a:1\"]\nnode = \"a.b\"", "cluster.node"),
            (
                "urls = [\"nats://a:1\"]\nnode = \"n\"\nnode_ttl_ms = 1500",
                "cluster.node_ttl_ms",
            ),
            (
                "urls = [\"nats://a:1\"]\nnode = \"n\"\nreplicas = 7",
                "cluster.replicas",
            ),
            (
                "urls = [\"nats://a:1\"]\nnode = \"n\"\nadvertise_address = \"host.example\"",
                "cluster.advertise_address",
            ),
            (
                "urls = [\"nats://a:1\"]\nnode = \"n\"\nwait_for_append = true",
                "cluster.wait_for_append",
            ),
        ] {
            let err = with(extra).unwrap_err().to_string();
            assert!(err.starts_with(key), "{extra}: {err}");
        }
        // Listening on every address: the node must say which one others reach it on.
        let every = MINIMAL.replace("address = \"127.0.0.1\"", "address = \"0.0.0.0\"");
        assert_ne!(every, MINIMAL);
        let cluster = "[cluster]\nurls = [\"nats://a:1\"]\nnode = \"n\"\n";
        let err = TopologyConfig::parse(&format!("{every}{cluster}"), "t.toml").unwrap_err();
        assert!(err.to_string().starts_with("listen.address"), "{err}");
        let told = format!("{every}{cluster}advertise_address = \"10.0.0.5\"\n");
        assert!(TopologyConfig::parse(&told, "t.toml").is_ok());
        // An answer's wait for its append must end inside the waits around it.
        let waits = format!(
            "{MINIMAL}[log]\nsync = \"always\"\n{cluster}wait_for_append = true\nappend_timeout_ms = 900\n"
        );
        let err = TopologyConfig::parse(&waits, "t.toml").unwrap_err();
        assert!(
            err.to_string().starts_with("cluster.append_timeout_ms"),
            "{err}"
        );
        let fits = waits.replace("append_timeout_ms = 900", "append_timeout_ms = 200");
        assert!(TopologyConfig::parse(&fits, "t.toml").is_ok());
    }

    #[test]
    fn the_issue_example_parses_with_default_limits() {
        let c = TopologyConfig::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.shards, vec![ShardSpec { cpu: 0 }, ShardSpec { cpu: 1 }]);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.decision.default_action, Action::Allow);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let text = MINIMAL.replace("port = 7400", "port = 7400\nprot = 1");
        let err = TopologyConfig::parse(&text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
        let text = format!("{MINIMAL}\n[limits]\nframe_len_max = 5\n");
        let err = TopologyConfig::parse(&text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("frame_len_max"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (MINIMAL.replace("cpu = 1", "cpu = 0"), "shard[1].cpu"),
            (
                format!("{MINIMAL}\n[limits]\nbatch_events_max = 0\n"),
                "limits.batch_events_max",
            ),
            (
                MINIMAL.replace("shard_port_base = 7410", "shard_port_base = 65535"),
                "listen.shard_port_base",
            ),
            (MINIMAL.replace("port = 7400", "port = 7411"), "listen.port"),
            (
                format!("{MINIMAL}\n[decision]\ndefault_action = \"maybe\"\n"),
                "maybe",
            ),
        ];
        for (text, key) in cases {
            let err = TopologyConfig::parse(&text, "t.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let no_shards = "[listen]\naddress = \"::1\"\nport = 1\nshard_port_base = 2\n";
        let err = TopologyConfig::parse(no_shards, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard"), "{err}");
    }

    #[test]
    fn rendered_files_parse_back_to_the_same_config() {
        let mut c = TopologyConfig::for_cpus(&[0, 1, 3]);
        c.limits.batch_events_max = 77;
        c.decision.default_action = Action::Review;
        let text = render(&c, "# test\n");
        assert_eq!(TopologyConfig::parse(&text, "r.toml").unwrap(), c);
        // Caught by the topology fuzz target's round trip: the cache directory was written
        // with Rust's escapes, which TOML does not read.
        c.models.cache_dir = "/var/cache/a\u{1}b\"c\\d\u{e9}".into();
        let text = render(&c, "# test\n");
        assert_eq!(TopologyConfig::parse(&text, "r.toml").unwrap(), c);
        // The same for every path the file names.
        let odd = "/etc/v\u{1}e\"r\\d\u{e9}ict";
        c.admin.token_file = format!("{odd}/admin.token");
        c.rules.dir = format!("{odd}/rules");
        c.tls.cert_file = format!("{odd}/cert.pem");
        c.tls.key_file = format!("{odd}/key.pem");
        c.tls.client_ca_file = format!("{odd}/ca.pem");
        let text = render(&c, "# test\n");
        assert_eq!(TopologyConfig::parse(&text, "r.toml").unwrap(), c);
    }

    #[test]
    fn the_admin_port_collides_with_no_other_even_when_left_out() {
        // Caught by the topology fuzz target's distinct-ports property: only an admin_port
        // written in the file was checked, so port + 80 could be a shard port; and the last
        // port a shard may take, 65535, was outside the range checked.
        let defaulted = MINIMAL.replace("shard_port_base = 7410", "shard_port_base = 7479");
        let err = TopologyConfig::parse(&defaulted, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("listen.admin_port: 7480 (port + 80"),
            "{err}"
        );
        let last = MINIMAL.replace(
            "shard_port_base = 7410",
            "shard_port_base = 65534\nadmin_port = 65535",
        );
        let err = TopologyConfig::parse(&last, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("listen.admin_port: 65535 collides"),
            "{err}"
        );
        let apart = MINIMAL.replace("shard_port_base = 7410", "shard_port_base = 7481");
        assert!(TopologyConfig::parse(&apart, "t.toml").is_ok());
    }

    #[test]
    fn the_repository_shards_toml_is_valid_and_documents_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shards.toml");
        let c = TopologyConfig::load(Path::new(path)).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            text,
            render(&c, FILE_HEADER),
            "shards.toml drifted from render()"
        );
    }
}
