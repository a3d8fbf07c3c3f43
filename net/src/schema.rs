//! The payload types: what an event, a decision, an error and the control replies look like
//! on the wire (rkyv 0.8 archives, validated with bytecheck before anything reads them).
//!
//! Owned types (`Event`, `Decision`, ...) are what clients build and read. The server never
//! builds owned decisions: it serializes borrowed *views* (`DecisionView`, ...) that archive
//! to exactly the same bytes, so answering copies strings straight from the request's
//! archive into the response without a heap allocation.

use std::net::IpAddr;

use rkyv::{
    Archive, Deserialize, Place, Serialize, SerializeUnsized,
    rancor::{Fallible, Source},
    ser::{Allocator, Writer},
    string::{ArchivedString, StringResolver},
    vec::{ArchivedVec, VecResolver},
};

/// One financial event to decide on. `account_id` is the routing key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Event {
    /// Client-chosen id, echoed in the decision (1..=128 bytes).
    pub event_id: String,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: u64,
    /// Routing key: decides the owning shard (1..=128 bytes).
    pub account_id: String,
    pub merchant_id: String,
    /// Amount in minor units of `currency` (cents for USD, yen for JPY); never a float.
    pub amount_minor: i64,
    /// ISO 4217 alphabetic code: three ASCII capitals.
    pub currency: String,
    /// ISO 3166-1 alpha-2 code: two ASCII capitals.
    pub country: String,
    /// Free-form channel name ("web", "app", "pos", ...).
    pub channel: String,
    pub device_id: String,
    /// Client IP; `0.0.0.0` when unknown.
    pub ip: IpAddr,
    /// ISO 18245 merchant category code, 0..=9999.
    pub mcc: u16,
    /// Optional precomputed model features.
    pub features: Vec<f64>,
    /// Optional typed attributes, unique names.
    pub attributes: Vec<Attribute>,
}

/// A named, typed attribute of an event.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
}

/// An attribute's value: a string, a number or a boolean.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum AttrValue {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// The payload of an evaluate-batch request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct EvaluateBatch {
    pub events: Vec<Event>,
}

/// What to do with an event.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[rkyv(compare(PartialEq))]
#[repr(u8)]
pub enum Action {
    Allow = 0,
    Review = 1,
    Deny = 2,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Review => "review",
            Action::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "allow" => Some(Action::Allow),
            "review" => Some(Action::Review),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }
}

impl ArchivedAction {
    pub fn to_native(&self) -> Action {
        match self {
            ArchivedAction::Allow => Action::Allow,
            ArchivedAction::Review => Action::Review,
            ArchivedAction::Deny => Action::Deny,
        }
    }
}

/// One model's score behind a decision.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ModelScore {
    pub name: String,
    pub score: f64,
    /// The model failed for this event (trap, deadline); `score` is the fallback.
    pub error: bool,
}

/// The answer to one event.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Decision {
    pub event_id: String,
    pub action: Action,
    pub score: i32,
    /// Ids of the rules that fired.
    pub rules: Vec<String>,
    /// Ids of the shadow rules that would have fired (they never change the action).
    pub shadow_rules: Vec<String>,
    pub models: Vec<ModelScore>,
    /// The rule epoch that decided.
    pub epoch: u64,
    /// The shard that decided.
    pub shard: u32,
    /// Server-side time for this event, nanoseconds: from the request frame being complete in
    /// the receive buffer to this decision being built.
    pub server_ns: u64,
}

/// The answer to an evaluate-batch request: one decision per event, in order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct DecisionBatch {
    pub decisions: Vec<Decision>,
}

/// The answer to a cluster-topology request (kind 0x07): which node and shard owns each
/// partition, and where every node of the map listens. Send an event to the owner of its
/// account's partition (see [`crate::routing`]) and it takes no hop between nodes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ClusterTopology {
    /// The partition map's epoch this describes.
    pub map_epoch: u64,
    /// Name of the routing hash; see [`crate::routing`].
    pub routing: String,
    pub partitions: u32,
    /// The nodes of the map, by index.
    pub nodes: Vec<ClusterNode>,
    /// `partition_nodes[p]`: the index in `nodes` of the node owning partition `p`.
    pub partition_nodes: Vec<u16>,
    /// `partition_shards[p]`: the shard of that node owning partition `p`.
    pub partition_shards: Vec<u16>,
}

/// One node of a [`ClusterTopology`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ClusterNode {
    pub name: String,
    /// The address its shards listen on; "" when the node is not live (its partitions
    /// move at the next heartbeat).
    pub address: String,
    /// `shard_ports[i]` reaches its shard i (empty when not live).
    pub shard_ports: Vec<u16>,
}

/// Node to node (kind 0x11): the windows of key values this shard keeps, for events
/// another node decides. The receiver checks that it owns every key by its own map and
/// that it decides with the same rule set, and records all of them or none (an error frame
/// then says why), so a window never counts an event twice or where it does not live.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PeerRecord {
    /// The sending node's name.
    pub from: String,
    /// The partition map epoch the sender routed by.
    pub map_epoch: u64,
    /// The digest of the sender's velocity functions (`RuleSet::windows_digest`): the
    /// windows' layout, which both sides must share.
    pub digest: String,
    pub events: Vec<Event>,
    /// Per event, the keys to record: bit `1 << k` for key k (0 account, 1 device, 2 ip,
    /// 3 merchant).
    pub keys: Vec<u8>,
}

/// The answer to a [`PeerRecord`]: every recorded (event, key)'s windows, in event order,
/// keys in key order, each key's velocity functions in rule-set order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PeerRecorded {
    pub values: Vec<f64>,
}

/// One forwarded event's outcome on the node that owns it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum PeerOutcome {
    Decided(Decision),
    /// Not decided: an [`crate::ErrorCode`] and why.
    Refused(ErrorReply),
}

/// The answer to a peer-decide (kind 0x10, an `EvaluateBatch` of events whose accounts
/// the receiving node owns): one outcome per event, in order. Unlike an evaluate-batch's
/// answer, one refused event does not hide the others' decisions.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PeerDecided {
    pub outcomes: Vec<PeerOutcome>,
}

/// The payload of an error frame (kind 0xFF). `code` is an [`crate::ErrorCode`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ErrorReply {
    pub code: u16,
    pub message: String,
}

/// Latency or size percentiles taken from an HdrHistogram.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// How many errors of one code a shard answered.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ErrorCount {
    pub code: u16,
    pub count: u64,
}

/// One shard's counters. In a `StatsReply`'s `total`, `shard` and `cpu` are `u32::MAX`
/// and percentiles come from the merged histograms (never averaged).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct ShardStats {
    pub shard: u32,
    pub cpu: u32,
    /// Rule epoch this shard decides with.
    pub epoch: u64,
    /// Requests accepted (whole frames read), of every kind.
    pub requests: u64,
    /// Response frames queued, error frames included.
    pub responses: u64,
    /// Events decided (one per evaluate, n per evaluate-batch).
    pub events: u64,
    /// Error frames sent.
    pub errors: u64,
    pub errors_by_code: Vec<ErrorCount>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    /// Connections refused because the shard was at `connections_per_shard_max` or had no
    /// room for their buffers in `connection_memory_bytes_max`.
    pub connections_rejected: u64,
    /// Connections closed because their TLS handshake failed or timed out (a plaintext
    /// client on a TLS port, a missing client certificate, ...).
    pub tls_handshakes_failed: u64,
    /// Events this shard sent to other shards: to their account's owner to decide, or to a key's owner to record.
    pub mesh_events_sent: u64,
    /// Events other shards forwarded to this one, the owner of their account, to decide.
    pub mesh_events_decided: u64,
    /// Events this shard recorded for other shards in the windows of the keys it owns (device, IP, merchant).
    pub mesh_events_recorded: u64,
    /// Decisions recorded in the decision log (appended and not lost to a failed write).
    pub log_records: u64,
    /// Bytes the decision log wrote.
    pub log_bytes_written: u64,
    /// fdatasync calls of the decision log.
    pub log_fsyncs: u64,
    /// Time spent in the decision log's fdatasync calls, ns (divide by fsyncs for the mean).
    pub log_fsync_ns_total: u64,
    /// Decisions answered without their record (log.on_write_error = answer: buffer full or a failed write).
    pub log_unlogged: u64,
    /// Decisions answered with error 9 because their record could not be written (log.on_write_error = refuse).
    pub log_refused: u64,
    /// Decision log writes that failed (disk full, I/O error).
    pub log_write_errors: u64,
    /// Decision log segments this shard started since it started.
    pub log_segments: u64,
    /// Requests handled per read batch (one read's worth of whole frames).
    pub batch_requests: Percentiles,
    /// Events per evaluate-batch request.
    pub batch_events: Percentiles,
    /// Server-side latency in ns: frame complete -> response queued.
    pub latency_ns: Percentiles,
    /// Per model this shard scores with (sorted by name).
    pub models: Vec<ModelStats>,
    /// Per-rule fire counts (shadow rules included), by name.
    pub rules: Vec<RuleCount>,
    /// Where this shard's core spends its time (measured by the shard itself).
    pub runtime: LoopStats,
    /// What the kernel did on this shard's CPU (the eBPF probes; zeros for probes that are
    /// off, see `StatsReply::probes`).
    pub kernel: KernelStats,
}

/// A shard's own loop: time per batch, time parked in io_uring, and stalls (the longest a
/// task ran between two yields, ScyllaDB's "reactor stall").
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct LoopStats {
    /// The shard executor's wall time counted so far: from its loop's first iteration to
    /// the end of the last one counted. `busy_ns + io_poll_ns + parked_ns == uptime_ns`
    /// exactly (per shard; a total sums the parts and takes the longest uptime).
    pub uptime_ns: u64,
    /// Running tasks (glommio's executor runtime), shard setup included.
    pub busy_ns: u64,
    /// Polling io_uring for completions without sleeping.
    pub io_poll_ns: u64,
    /// The rest of the wall time: parked in io_uring waiting for completions (or timers),
    /// or runnable but not running (see the run-queue delay in `KernelStats`).
    pub parked_ns: u64,
    /// Time to decide one read's worth of requests (one batch), ns.
    pub batch_ns: Percentiles,
    /// Task polls (runs between two yields) timed.
    pub polls: u64,
    /// The longest task poll, ns (wall time: being preempted mid-poll counts).
    pub poll_ns_max: u64,
    /// Polls longer than `stall_threshold_ns`.
    pub stalls: u64,
    pub stall_threshold_ns: u64,
}

/// The kernel's view of one CPU, from the eBPF probes (summed over CPUs in the total).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct KernelStats {
    /// Run-queue delay of the engine's threads (wake-up or preemption -> running), ns; from
    /// log2 buckets, so each percentile is the upper bound of its bucket.
    pub runq_delay_ns: Percentiles,
    /// The log2 buckets: entry i counts delays in [2^i, 2^(i+1)) ns.
    pub runq_delay_ns_log2: Vec<u64>,
    /// io_uring requests submitted and completed by the engine's threads.
    pub io_uring_submits: u64,
    pub io_uring_completions: u64,
    /// TCP retransmits on this CPU, every process's (the kernel retransmits from timers).
    pub tcp_retransmits: u64,
    /// Softirqs handled on this CPU and the time they took, every process's.
    pub softirqs: u64,
    pub softirq_ns: u64,
    /// Syscall latency of the engine's threads, ns (the opt-in `syscalls` probe).
    pub syscall_ns: Percentiles,
    pub syscall_ns_log2: Vec<u64>,
}

/// Whether one group of eBPF probes runs, and if not, why.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct ProbeState {
    /// `runqueue`, `io_uring`, `tcp_retransmit`, `softirq` or `syscalls`.
    pub group: String,
    pub active: bool,
    /// Empty when active.
    pub reason: String,
}

/// How often one rule fired on one shard (or, in the total, on all of them), since the
/// engine started, across reloads (a rule that stays keeps counting, by name).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct RuleCount {
    pub name: String,
    /// A shadow rule: it fired without changing the decision.
    pub shadow: bool,
    pub fired: u64,
}

/// One model's calls on one shard (or, in the total, on all of them).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    /// Calls made (one per batch and model, split at `rows_per_call_max`).
    pub calls: u64,
    /// Events scored.
    pub rows: u64,
    pub traps: u64,
    /// Calls cut by the deadline.
    pub timeouts: u64,
    /// Error codes, addresses out of bounds, non-finite scores.
    pub errors: u64,
    /// Events given the fallback because no instance was ready.
    pub exhausted_rows: u64,
    /// Instances ready now (summed in the total).
    pub instances_ready: u64,
    /// Time per call, ns.
    pub call_ns: Percentiles,
}

/// The payload of a stats response: every shard, then the total.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct StatsReply {
    pub shards: Vec<ShardStats>,
    pub total: ShardStats,
    /// Each eBPF probe group's state.
    pub probes: Vec<ProbeState>,
}

/// The payload of a topology response: everything a shard-aware client needs.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TopologyReply {
    pub shard_count: u32,
    /// The shard that answered.
    pub shard: u32,
    /// Name of the routing hash; see [`crate::routing`].
    pub routing: String,
    pub address: String,
    /// The shared port (every shard accepts on it).
    pub port: u16,
    /// `shard_ports[i]` reaches shard i directly.
    pub shard_ports: Vec<u16>,
    /// `cpus[i]` is the CPU shard i is pinned to.
    pub cpus: Vec<u32>,
    /// How many partitions key values are placed in (`routing.partitions`).
    pub partitions: u32,
    /// `partition_shards[p]` is the shard that owns partition `p` (`partitions` entries):
    /// send an event to the owner of its account's partition, see [`crate::routing`].
    pub partition_shards: Vec<u16>,
}

/// The payload of a reload request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ReloadRequest {
    /// The rules file or directory to compile, relative to the server's `rules.dir` (no
    /// absolute path, no `..`). Empty: the one the engine serves.
    pub rules_path: String,
}

/// The answer to a reload: the new epoch, or why the current one stays.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ReloadReply {
    /// Whether a new rule set was published.
    pub ok: bool,
    /// The epoch now current (the new one when `ok`, the kept one otherwise).
    pub epoch: u64,
    /// The rules file or directory compiled.
    pub rules_path: String,
    /// Rules in the published set (0 when not `ok`).
    pub rules: u32,
    /// Digest of every file the set was built from.
    pub digest: String,
    /// Time spent reading, checking and compiling, microseconds.
    pub compile_us: u64,
    /// Every error, rendered as `file:line:col: error: message` with the line and a caret.
    pub errors: Vec<String>,
    /// The models published with the rules, `name@version (sha256 prefix)`.
    pub models: Vec<String>,
    /// From publishing to the last shard deciding with the new epoch, microseconds (0 when
    /// nothing was published or a shard did not take it within the wait).
    pub swap_us: u64,
}

// ---- Borrowed views: serialize to the same archives as the owned types. ----

/// A borrowed string that archives as an [`ArchivedString`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct StrView<'a>(pub &'a str);

impl Archive for StrView<'_> {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve(&self, resolver: StringResolver, out: Place<ArchivedString>) {
        ArchivedString::resolve_from_str(self.0, resolver, out);
    }
}

impl<S> Serialize<S> for StrView<'_>
where
    S: Fallible + Writer + ?Sized,
    S::Error: Source,
    str: SerializeUnsized<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(self.0, serializer)
    }
}

/// A borrowed slice that archives as an [`ArchivedVec`] of its elements' archives.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct SliceView<'a, T>(pub &'a [T]);

impl<T: Archive> Archive for SliceView<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<T, S> Serialize<S> for SliceView<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

/// Implements `Archive` + `Serialize` for a borrowed view whose archive is an owned type's
/// archive, field by field (the derive's `as` cannot see through the views' lifetimes).
macro_rules! view_archives_as {
    ($view:ident => $archived:ident, $resolver:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        #[doc(hidden)]
        pub struct $resolver {
            $($field: <$ty as Archive>::Resolver,)*
        }

        impl Archive for $view<'_> {
            type Archived = $archived;
            type Resolver = $resolver;

            fn resolve(&self, resolver: $resolver, out: Place<$archived>) {
                rkyv::munge::munge!(let $archived { $($field,)* .. } = out);
                $(self.$field.resolve(resolver.$field, $field);)*
            }
        }

        impl<S> Serialize<S> for $view<'_>
        where
            S: Fallible + Allocator + Writer + ?Sized,
            S::Error: Source,
        {
            fn serialize(&self, serializer: &mut S) -> Result<$resolver, S::Error> {
                Ok($resolver { $($field: self.$field.serialize(serializer)?,)* })
            }
        }
    };
}

/// Borrowed form of [`ModelScore`].
#[derive(Debug, Clone, Copy)]
pub struct ModelScoreView<'a> {
    pub name: StrView<'a>,
    pub score: f64,
    pub error: bool,
}

view_archives_as!(ModelScoreView => ArchivedModelScore, ModelScoreViewResolver {
    name: StrView<'static>,
    score: f64,
    error: bool,
});

/// Borrowed form of [`Decision`]: what the server serializes.
#[derive(Debug, Clone, Copy)]
pub struct DecisionView<'a> {
    pub event_id: StrView<'a>,
    pub action: Action,
    pub score: i32,
    pub rules: SliceView<'a, StrView<'a>>,
    pub shadow_rules: SliceView<'a, StrView<'a>>,
    pub models: SliceView<'a, ModelScoreView<'a>>,
    pub epoch: u64,
    pub shard: u32,
    pub server_ns: u64,
}

view_archives_as!(DecisionView => ArchivedDecision, DecisionViewResolver {
    event_id: StrView<'static>,
    action: Action,
    score: i32,
    rules: SliceView<'static, StrView<'static>>,
    shadow_rules: SliceView<'static, StrView<'static>>,
    models: SliceView<'static, ModelScoreView<'static>>,
    epoch: u64,
    shard: u32,
    server_ns: u64,
});

/// Borrowed form of [`DecisionBatch`].
#[derive(Debug, Clone, Copy)]
pub struct DecisionBatchView<'a> {
    pub decisions: SliceView<'a, DecisionView<'a>>,
}

view_archives_as!(DecisionBatchView => ArchivedDecisionBatch, DecisionBatchViewResolver {
    decisions: SliceView<'static, DecisionView<'static>>,
});

/// Borrowed form of [`ErrorReply`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorReplyView<'a> {
    pub code: u16,
    pub message: StrView<'a>,
}

view_archives_as!(ErrorReplyView => ArchivedErrorReply, ErrorReplyViewResolver {
    code: u16,
    message: StrView<'static>,
});

impl ArchivedEvent {
    /// The event's IP address.
    pub fn ip_addr(&self) -> IpAddr {
        match &self.ip {
            rkyv::net::ArchivedIpAddr::V4(v4) => IpAddr::V4(v4.as_ipv4()),
            rkyv::net::ArchivedIpAddr::V6(v6) => IpAddr::V6(v6.as_ipv6()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameEncoder, Scan, scan};
    use rkyv::util::AlignedVec;

    #[test]
    fn decision_view_archives_like_an_owned_decision() {
        let rules = [StrView("big_foreign_purchase"), StrView("burst")];
        let models = [ModelScoreView {
            name: StrView("fraud_gbdt"),
            score: 0.5,
            error: false,
        }];
        let view = DecisionView {
            event_id: StrView("evt-000000000000000001"),
            action: Action::Review,
            score: 40,
            rules: SliceView(&rules),
            shadow_rules: SliceView(&[]),
            models: SliceView(&models),
            epoch: 3,
            shard: 1,
            server_ns: 1234,
        };
        let mut out = AlignedVec::new();
        FrameEncoder::new().push(&mut out, 0x82, 9, &view).unwrap();
        let Scan::Frame(at) = scan(&out, 1 << 20) else {
            panic!()
        };
        let payload = &out[at.payload_start..at.payload_start + at.header.len as usize];
        let owned: Decision = rkyv::from_bytes::<Decision, rkyv::rancor::Error>(payload).unwrap();
        assert_eq!(
            owned,
            Decision {
                event_id: "evt-000000000000000001".into(),
                action: Action::Review,
                score: 40,
                rules: vec!["big_foreign_purchase".into(), "burst".into()],
                shadow_rules: vec![],
                models: vec![ModelScore {
                    name: "fraud_gbdt".into(),
                    score: 0.5,
                    error: false
                }],
                epoch: 3,
                shard: 1,
                server_ns: 1234,
            }
        );
    }
}
