//! The metrics plane's control-thread half. Shards send stats snapshots over a bounded
//! thingbuf channel (never blocking, never a shared counter); the control thread keeps each
//! shard's latest here beside the eBPF probes (verdict-probes), and everything the operator
//! reads is rendered from this one place: the kernel columns of a stats reply, the admin
//! endpoints' `/stats` JSON and `/metrics` Prometheus text, and health.
//!
//! Data cores never touch this: it lives behind a mutex shared by the control thread and
//! the admin HTTP threads only.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use verdict_net::{KernelStats, Percentiles, ProbeState, ShardStats, StatsReply};
use verdict_probes::{CpuKernel, KernelSnapshot, LOG2_BUCKETS, Probes};

use crate::stats::{self, Snapshot};

/// What a shard sends: `None` only as the channel's empty slot (thingbuf needs a default).
pub type Report = Option<Box<Snapshot>>;
pub type ReportSender = thingbuf::mpsc::blocking::Sender<Report>;
pub type ReportReceiver = thingbuf::mpsc::blocking::Receiver<Report>;

/// Snapshots that may wait per shard before a shard's next one is dropped (the control
/// thread drains the channel every few ms; a drop only delays the admin view).
const REPORTS_QUEUED_PER_SHARD_MAX: usize = 4;

pub fn report_channel(shard_count: usize) -> (ReportSender, ReportReceiver) {
    thingbuf::mpsc::blocking::channel(shard_count.max(1) * REPORTS_QUEUED_PER_SHARD_MAX)
}

/// A shard whose last snapshot is older than this many intervals is reported unhealthy.
const STALE_INTERVALS: u32 = 3;
/// ... and never sooner than this (a shard busy with one long batch is not dead).
const STALE_AFTER_MIN: Duration = Duration::from_secs(2);

/// Why probes are off when the operator turned them off.
const DISABLED_REASON: &str = "off ([probes] enabled = false or --no-probes)";

/// The control thread's view of the engine.
pub struct Plane {
    shard_cpus: Vec<u32>,
    latest: Vec<Option<(Instant, Snapshot)>>,
    probes: Option<Probes>,
    probe_states: Vec<ProbeState>,
    interval: Duration,
    /// When the plane started waiting for reports: a shard that has not reported yet is
    /// stale only once this is longer ago than the staleness limit.
    since: Instant,
    ready: bool,
    draining: bool,
    /// The cluster thread's view, on a cluster node.
    cluster: Option<std::sync::Arc<std::sync::Mutex<crate::cluster::View>>>,
}

impl Plane {
    /// `probes`: `None` when the operator turned them off.
    pub fn new(shard_cpus: Vec<u32>, probes: Option<Probes>, interval: Duration) -> Plane {
        let probe_states = match &probes {
            Some(p) => p
                .status()
                .iter()
                .map(|s| ProbeState {
                    group: s.group.name().to_string(),
                    active: s.active,
                    reason: s.reason.clone(),
                })
                .collect(),
            None => verdict_probes::Group::ALL
                .iter()
                .map(|g| ProbeState {
                    group: g.name().to_string(),
                    active: false,
                    reason: DISABLED_REASON.to_string(),
                })
                .collect(),
        };
        Plane {
            latest: shard_cpus.iter().map(|_| None).collect(),
            shard_cpus,
            probes,
            probe_states,
            interval,
            since: Instant::now(),
            ready: false,
            draining: false,
            cluster: None,
        }
    }

    pub fn probe_states(&self) -> &[ProbeState] {
        &self.probe_states
    }

    /// Takes every snapshot waiting on `reports`.
    pub fn drain(&mut self, reports: &ReportReceiver) {
        while let Ok(report) = reports.try_recv() {
            if let Some(snapshot) = report {
                self.ingest(*snapshot, Instant::now());
            }
        }
    }

    pub fn ingest(&mut self, snapshot: Snapshot, at: Instant) {
        let shard = snapshot.stats.shard as usize;
        if let Some(slot) = self.latest.get_mut(shard) {
            *slot = Some((at, snapshot));
        }
    }

    /// Connections closed so far, all shards, as their latest reports say.
    pub fn connections_closed(&self) -> u64 {
        self.latest
            .iter()
            .flatten()
            .map(|(_, s)| {
                let s = &s.stats;
                s.connections_accepted.saturating_sub(s.connections_open)
            })
            .sum()
    }

    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Shows the cluster thread's `view` too (a cluster node).
    pub fn set_cluster(&mut self, view: std::sync::Arc<std::sync::Mutex<crate::cluster::View>>) {
        self.cluster = Some(view);
    }

    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    /// The kernel maps, read now (zeros when the probes are off).
    pub fn kernel(&self) -> KernelSnapshot {
        match &self.probes {
            Some(p) => p.read(),
            None => KernelSnapshot::default(),
        }
    }

    /// Merges `snapshots` (fresh from the shards, or the latest ones here) and adds each
    /// shard's kernel columns, their total, and the probe states.
    pub fn reply(&self, snapshots: Vec<Snapshot>, kernel: &KernelSnapshot) -> StatsReply {
        let mut reply = stats::merge(snapshots);
        let mut shard_cpus = KernelSnapshot::default();
        for s in &mut reply.shards {
            if let Some(cpu) = kernel.cpus.get(s.cpu as usize) {
                s.kernel = kernel_stats(cpu);
                shard_cpus.cpus.push(cpu.clone());
            }
        }
        reply.total.kernel = kernel_stats(&shard_cpus.total());
        reply.probes = self.probe_states.clone();
        reply
    }

    /// The reply from the latest snapshots (shards that have not reported yet are left out),
    /// with each snapshot's age in ms.
    pub fn latest_reply(&self, kernel: &KernelSnapshot) -> (StatsReply, Vec<(u32, u64)>) {
        let now = Instant::now();
        let ages = self
            .latest
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .map(|(at, _)| (i as u32, now.duration_since(*at).as_millis() as u64))
            })
            .collect();
        let snapshots = self
            .latest
            .iter()
            .filter_map(|s| s.as_ref().map(|(_, snap)| snap.clone()))
            .collect();
        (self.reply(snapshots, kernel), ages)
    }

    /// Live: every shard has reported within a few stats intervals (a stalled or dead core
    /// stops reporting). The error names the shards that have not.
    pub fn health(&self) -> Result<(), String> {
        let limit = (self.interval * STALE_INTERVALS).max(STALE_AFTER_MIN);
        let now = Instant::now();
        let stale: Vec<String> = self
            .latest
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                None if now.duration_since(self.since) > limit => {
                    Some(format!("shard {i} has not reported since the start"))
                }
                None => None,
                Some((at, _)) if now.duration_since(*at) > limit => Some(format!(
                    "shard {i} last reported {} ms ago (limit {} ms)",
                    now.duration_since(*at).as_millis(),
                    limit.as_millis()
                )),
                Some(_) => None,
            })
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(stale.join("; "))
        }
    }

    /// Ready: every shard listens and the engine is not draining.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining {
            Err("draining: shutting down")
        } else if !self.ready {
            Err("starting: shards are not all listening yet")
        } else {
            Ok(())
        }
    }

    /// `/metrics`: Prometheus text exposition format 0.0.4.
    pub fn prometheus(&self, kernel: &KernelSnapshot) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let now = Instant::now();
        let shards: Vec<(&Snapshot, Instant)> = self
            .latest
            .iter()
            .filter_map(|s| s.as_ref().map(|(at, snap)| (snap, *at)))
            .collect();
        let mut m = Exposition { out: &mut out };
        m.gauge("verdict_up", "1 while the engine serves.", &[("", 1.0)]);
        m.gauge(
            "verdict_ready",
            "1 when every shard listens and the engine is not draining.",
            &[("", f64::from(u8::from(self.readiness().is_ok())))],
        );
        let probe_rows: Vec<(String, f64)> = self
            .probe_states
            .iter()
            .map(|p| {
                (
                    format!(
                        "group=\"{}\",reason=\"{}\"",
                        p.group,
                        escape_label(&p.reason)
                    ),
                    f64::from(u8::from(p.active)),
                )
            })
            .collect();
        m.gauge_owned(
            "verdict_probe_active",
            "1 for each eBPF probe group that is loaded and attached; reason says why not.",
            &probe_rows,
        );
        let label = |s: &ShardStats| format!("shard=\"{}\",cpu=\"{}\"", s.shard, s.cpu);
        let per_shard = |f: &dyn Fn(&Snapshot) -> f64| -> Vec<(String, f64)> {
            shards
                .iter()
                .map(|(snap, _)| (label(&snap.stats), f(snap)))
                .collect()
        };
        m.gauge_owned(
            "verdict_snapshot_age_seconds",
            "Age of the shard's last stats snapshot (runtime.stats_interval_ms apart).",
            &shards
                .iter()
                .map(|(snap, at)| (label(&snap.stats), now.duration_since(*at).as_secs_f64()))
                .collect::<Vec<_>>(),
        );
        m.gauge_owned(
            "verdict_rule_epoch",
            "The rule epoch the shard decides with.",
            &per_shard(&|s| s.stats.epoch as f64),
        );
        type Field = fn(&ShardStats) -> u64;
        let counters: [(&str, &str, Field); 21] = [
            (
                "verdict_requests_total",
                "Requests read (whole frames), every kind.",
                |s| s.requests,
            ),
            (
                "verdict_responses_total",
                "Response frames queued, error frames included.",
                |s| s.responses,
            ),
            ("verdict_events_total", "Events decided.", |s| s.events),
            ("verdict_errors_total", "Error frames sent.", |s| s.errors),
            (
                "verdict_received_bytes_total",
                "Bytes read from clients.",
                |s| s.bytes_in,
            ),
            (
                "verdict_sent_bytes_total",
                "Bytes written to clients.",
                |s| s.bytes_out,
            ),
            (
                "verdict_connections_accepted_total",
                "Connections accepted.",
                |s| s.connections_accepted,
            ),
            (
                "verdict_connections_rejected_total",
                "Connections refused at limits.connections_per_shard_max or connection_memory_bytes_max.",
                |s| s.connections_rejected,
            ),
            (
                "verdict_tls_handshakes_failed_total",
                "Connections closed because their TLS handshake failed or timed out.",
                |s| s.tls_handshakes_failed,
            ),
            (
                "verdict_mesh_events_sent_total",
                "Events this shard sent to other shards: to their account's owner to decide, or to a key's owner to record.",
                |s| s.mesh_events_sent,
            ),
            (
                "verdict_mesh_events_decided_total",
                "Events other shards forwarded to this one, the owner of their account, to decide.",
                |s| s.mesh_events_decided,
            ),
            (
                "verdict_mesh_events_recorded_total",
                "Events this shard recorded for other shards in the windows of the keys it owns (device, IP, merchant).",
                |s| s.mesh_events_recorded,
            ),
            (
                "verdict_decision_log_records_total",
                "Decisions recorded in the decision log (appended and not lost to a failed write).",
                |s| s.log_records,
            ),
            (
                "verdict_decision_log_written_bytes_total",
                "Bytes the decision log wrote.",
                |s| s.log_bytes_written,
            ),
            (
                "verdict_decision_log_fsyncs_total",
                "fdatasync calls of the decision log.",
                |s| s.log_fsyncs,
            ),
            (
                "verdict_decision_log_fsync_nanoseconds_total",
                "Time spent in the decision log's fdatasync calls, ns (divide by fsyncs for the mean).",
                |s| s.log_fsync_ns_total,
            ),
            (
                "verdict_decision_log_unlogged_total",
                "Decisions answered without their record (log.on_write_error = answer: buffer full or a failed write).",
                |s| s.log_unlogged,
            ),
            (
                "verdict_decision_log_refused_total",
                "Decisions answered with error 9 because their record could not be written (log.on_write_error = refuse).",
                |s| s.log_refused,
            ),
            (
                "verdict_decision_log_write_errors_total",
                "Decision log writes that failed (disk full, I/O error).",
                |s| s.log_write_errors,
            ),
            (
                "verdict_decision_log_segments_total",
                "Decision log segments this shard started since it started.",
                |s| s.log_segments,
            ),
            (
                "verdict_stalls_total",
                "Task polls longer than runtime.stall_threshold_us.",
                |s| s.runtime.stalls,
            ),
        ];
        for (name, help, field) in counters {
            m.counter(name, help, &per_shard(&|s| field(&s.stats) as f64));
        }
        m.gauge_owned(
            "verdict_connections_open",
            "Open connections.",
            &per_shard(&|s| s.stats.connections_open as f64),
        );
        let seconds: [(&str, &str, Field); 3] = [
            (
                "verdict_core_busy_seconds_total",
                "Time the shard's executor ran tasks.",
                |s| s.runtime.busy_ns,
            ),
            (
                "verdict_core_io_poll_seconds_total",
                "Time the shard polled io_uring without sleeping.",
                |s| s.runtime.io_poll_ns,
            ),
            (
                "verdict_core_parked_seconds_total",
                "Time the shard was parked in io_uring waiting for work.",
                |s| s.runtime.parked_ns,
            ),
        ];
        for (name, help, field) in seconds {
            m.counter(name, help, &per_shard(&|s| field(&s.stats) as f64 / 1e9));
        }
        m.gauge_owned(
            "verdict_task_poll_max_seconds",
            "The longest a task ran between two yields since start.",
            &per_shard(&|s| s.stats.runtime.poll_ns_max as f64 / 1e9),
        );
        m.gauge_owned(
            "verdict_stall_threshold_seconds",
            "runtime.stall_threshold_us.",
            &per_shard(&|s| s.stats.runtime.stall_threshold_ns as f64 / 1e9),
        );
        let errors: Vec<(String, f64)> = shards
            .iter()
            .flat_map(|(snap, _)| {
                let l = label(&snap.stats);
                snap.stats.errors_by_code.iter().map(move |e| {
                    let name =
                        verdict_net::ErrorCode::from_u16(e.code).map_or("unknown", |c| c.name());
                    (format!("{l},code=\"{name}\""), e.count as f64)
                })
            })
            .collect();
        m.counter(
            "verdict_errors_by_code_total",
            "Error frames sent, by error code name.",
            &errors,
        );
        m.histogram_family(
            "verdict_request_latency_seconds",
            "Server-side latency: frame complete -> response queued.",
            shards.iter().map(|(snap, _)| {
                (
                    label(&snap.stats),
                    hdr_buckets(snap.latency_ns(), &LATENCY_BOUNDS_NS),
                )
            }),
        );
        m.histogram_family(
            "verdict_batch_seconds",
            "Time to answer one read's worth of requests (one batch).",
            shards.iter().map(|(snap, _)| {
                (
                    label(&snap.stats),
                    hdr_buckets(snap.batch_ns(), &LATENCY_BOUNDS_NS),
                )
            }),
        );
        self.model_metrics(&mut m, &shards);
        let fired: Vec<(String, f64)> = shards
            .iter()
            .flat_map(|(snap, _)| {
                let s = &snap.stats;
                s.rules.iter().map(move |r| {
                    (
                        format!(
                            "shard=\"{}\",cpu=\"{}\",rule=\"{}\",shadow=\"{}\"",
                            s.shard,
                            s.cpu,
                            escape_label(&r.name),
                            r.shadow
                        ),
                        r.fired as f64,
                    )
                })
            })
            .collect();
        m.counter(
            "verdict_rule_fired_total",
            "Times each rule fired (shadow=\"true\": a shadow rule, which changes nothing), across reloads by name.",
            &fired,
        );
        self.kernel_metrics(&mut m, kernel);
        self.cluster_metrics(&mut m);
        out
    }

    /// A cluster node's standing, from its own cluster thread (so NATS being away shows).
    fn cluster_metrics(&self, m: &mut Exposition) {
        let Some(view) = &self.cluster else { return };
        let v = view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        m.gauge(
            "verdict_cluster_decisions_unshipped",
            "Decision log records this node has written and not yet appended to VERDICT_DECISIONS and VERDICT_EVENTS (what a crash now would keep from the partitions' new owners).",
            &[("", v.decisions_unshipped as f64)],
        );
        m.gauge(
            "verdict_cluster_heartbeat_age_seconds",
            "Since this node's membership record was last written (-1: never); past cluster.node_ttl_ms the others take its partitions.",
            &[("", v.last_put.map_or(-1.0, |t| t.elapsed().as_secs_f64()))],
        );
        m.counter(
            "verdict_cluster_heartbeats_failed_total",
            "Membership records that could not be written (NATS slow or away).",
            &[(String::new(), v.heartbeats_failed as f64)],
        );
        m.gauge(
            "verdict_cluster_map_epoch",
            "The partition map epoch this node's shards route by (0: none yet).",
            &[("", v.routes_epoch as f64)],
        );
        m.gauge(
            "verdict_cluster_fenced",
            "1 while this node refuses every event because its record went unrefreshed too long.",
            &[("", f64::from(u8::from(v.fenced)))],
        );
        m.gauge(
            "verdict_cluster_partitions_moving",
            "Partitions in a move, by state: cold here (events refused while their history replays), handing_off (decided here while their new owner prepares), releasing (let go, shipping what was decided), prepared (history replayed here, their old owner still deciding).",
            &[
                ("state=\"cold\"", v.cold as f64),
                ("state=\"handing_off\"", v.handing_off as f64),
                ("state=\"releasing\"", v.releasing as f64),
                ("state=\"prepared\"", v.prepared as f64),
            ],
        );
    }

    fn model_metrics(&self, m: &mut Exposition, shards: &[(&Snapshot, Instant)]) {
        let rows: Vec<(String, &verdict_net::ModelStats, &Histogram<u64>)> = shards
            .iter()
            .flat_map(|(snap, _)| {
                let s = &snap.stats;
                s.models.iter().zip(snap.call_ns()).map(move |(model, h)| {
                    (
                        format!(
                            "shard=\"{}\",cpu=\"{}\",model=\"{}\",version=\"{}\"",
                            s.shard,
                            s.cpu,
                            escape_label(&model.name),
                            escape_label(&model.version)
                        ),
                        model,
                        h,
                    )
                })
            })
            .collect();
        type Field = fn(&verdict_net::ModelStats) -> u64;
        let counters: [(&str, &str, Field); 6] = [
            (
                "verdict_model_calls_total",
                "Model calls (one per batch and model).",
                |x| x.calls,
            ),
            ("verdict_model_rows_total", "Events scored.", |x| x.rows),
            ("verdict_model_traps_total", "Calls that trapped.", |x| {
                x.traps
            }),
            (
                "verdict_model_timeouts_total",
                "Calls cut by their deadline.",
                |x| x.timeouts,
            ),
            (
                "verdict_model_errors_total",
                "Calls with an error code, a bad address or a non-finite score.",
                |x| x.errors,
            ),
            (
                "verdict_model_exhausted_rows_total",
                "Events given the fallback with no instance ready.",
                |x| x.exhausted_rows,
            ),
        ];
        for (name, help, field) in counters {
            let values: Vec<(String, f64)> = rows
                .iter()
                .map(|(l, x, _)| (l.clone(), field(x) as f64))
                .collect();
            m.counter(name, help, &values);
        }
        let ready: Vec<(String, f64)> = rows
            .iter()
            .map(|(l, x, _)| (l.clone(), x.instances_ready as f64))
            .collect();
        m.gauge_owned(
            "verdict_model_instances_ready",
            "Instances ready in the pool.",
            &ready,
        );
        m.histogram_family(
            "verdict_model_call_seconds",
            "Time per model call.",
            rows.iter()
                .map(|(l, _, h)| (l.clone(), hdr_buckets(h, &LATENCY_BOUNDS_NS))),
        );
    }

    fn kernel_metrics(&self, m: &mut Exposition, kernel: &KernelSnapshot) {
        let label = |cpu: &CpuKernel| match self.shard_cpus.iter().position(|&c| c == cpu.cpu) {
            Some(shard) => format!("cpu=\"{}\",shard=\"{shard}\"", cpu.cpu),
            None => format!("cpu=\"{}\",shard=\"none\"", cpu.cpu),
        };
        let active = |group: &str| {
            self.probe_states
                .iter()
                .any(|p| p.group == group && p.active)
        };
        type Field = fn(&CpuKernel) -> f64;
        let counters: [(&str, &str, &str, Field); 5] = [
            (
                "io_uring",
                "verdict_io_uring_submissions_total",
                "io_uring requests submitted by the engine's threads (eBPF).",
                |c| c.io_uring_submits as f64,
            ),
            (
                "io_uring",
                "verdict_io_uring_completions_total",
                "io_uring completions posted for the engine's threads (eBPF).",
                |c| c.io_uring_completions as f64,
            ),
            (
                "tcp_retransmit",
                "verdict_tcp_retransmits_total",
                "TCP retransmits on this CPU, every process's (eBPF).",
                |c| c.tcp_retransmits as f64,
            ),
            (
                "softirq",
                "verdict_softirq_seconds_total",
                "Time in softirqs on this CPU, every process's (eBPF).",
                |c| c.softirq_ns as f64 / 1e9,
            ),
            (
                "softirq",
                "verdict_softirqs_total",
                "Softirqs handled on this CPU (eBPF).",
                |c| c.softirqs as f64,
            ),
        ];
        for (group, name, help, field) in counters {
            if active(group) {
                let values: Vec<(String, f64)> =
                    kernel.cpus.iter().map(|c| (label(c), field(c))).collect();
                m.counter(name, help, &values);
            }
        }
        if active("runqueue") {
            m.histogram_family(
                "verdict_runqueue_delay_seconds",
                "Run-queue delay of the engine's threads on this CPU: runnable -> running (eBPF, log2 buckets).",
                kernel
                    .cpus
                    .iter()
                    .map(|c| (label(c), log2_buckets(&c.runq_delay_ns_log2))),
            );
        }
        if active("syscalls") {
            m.histogram_family(
                "verdict_syscall_latency_seconds",
                "Syscall latency of the engine's threads (eBPF, opt-in, log2 buckets).",
                kernel
                    .cpus
                    .iter()
                    .map(|c| (label(c), log2_buckets(&c.syscall_ns_log2))),
            );
        }
    }
}

/// Bucket bounds (ns) for latency-like histograms in `/metrics`.
const LATENCY_BOUNDS_NS: [u64; 18] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
];

/// A histogram for the exposition: (upper bound in seconds, cumulative count), then the total
/// count and the sum in seconds.
struct Buckets {
    cumulative: Vec<(f64, u64)>,
    count: u64,
    sum_seconds: f64,
}

fn hdr_buckets(h: &Histogram<u64>, bounds_ns: &[u64]) -> Buckets {
    let cumulative = bounds_ns
        .iter()
        .map(|&b| (b as f64 / 1e9, h.count_between(0, b)))
        .collect();
    Buckets {
        cumulative,
        count: h.len(),
        // HdrHistogram keeps no exact sum: this is the mean (within its precision) x count.
        sum_seconds: h.mean() * h.len() as f64 / 1e9,
    }
}

/// Entry i of a log2 histogram counts values in [2^i, 2^(i+1)) ns (entry 0 also counts 0;
/// the last entry is open-ended, so it has no finite bound: `+Inf` covers it).
fn log2_buckets(log2: &[u64; LOG2_BUCKETS]) -> Buckets {
    let mut running = 0;
    let mut sum_ns = 0.0;
    let mut cumulative = Vec::with_capacity(LOG2_BUCKETS);
    for (i, &n) in log2.iter().enumerate() {
        running += n;
        // The bucket's midpoint stands for its values.
        sum_ns += n as f64 * 1.5 * (1u64 << i) as f64;
        if i + 1 < LOG2_BUCKETS {
            let upper = verdict_probes::log2_bucket_upper_ns(i);
            cumulative.push((upper as f64 / 1e9, running));
        }
    }
    Buckets {
        cumulative,
        count: running,
        sum_seconds: sum_ns / 1e9,
    }
}

/// Percentiles of a log2 histogram: each is the upper bound of the bucket it falls in.
pub fn log2_percentiles(log2: &[u64; LOG2_BUCKETS]) -> Percentiles {
    let at = |q| verdict_probes::log2_quantile_ns(log2, q);
    Percentiles {
        count: verdict_probes::log2_count(log2),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

fn kernel_stats(cpu: &CpuKernel) -> KernelStats {
    KernelStats {
        runq_delay_ns: log2_percentiles(&cpu.runq_delay_ns_log2),
        runq_delay_ns_log2: cpu.runq_delay_ns_log2.to_vec(),
        io_uring_submits: cpu.io_uring_submits,
        io_uring_completions: cpu.io_uring_completions,
        tcp_retransmits: cpu.tcp_retransmits,
        softirqs: cpu.softirqs,
        softirq_ns: cpu.softirq_ns,
        syscall_ns: log2_percentiles(&cpu.syscall_ns_log2),
        syscall_ns_log2: cpu.syscall_ns_log2.to_vec(),
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes metric families in the text format; each family once, with HELP and TYPE.
struct Exposition<'a> {
    out: &'a mut String,
}

impl Exposition<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn samples(&mut self, name: &str, rows: &[(String, f64)]) {
        for (labels, value) in rows {
            if labels.is_empty() {
                let _ = writeln!(self.out, "{name} {value}");
            } else {
                let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
            }
        }
    }

    fn gauge(&mut self, name: &str, help: &str, rows: &[(&str, f64)]) {
        let rows: Vec<(String, f64)> = rows.iter().map(|(l, v)| (l.to_string(), *v)).collect();
        self.gauge_owned(name, help, &rows);
    }

    fn gauge_owned(&mut self, name: &str, help: &str, rows: &[(String, f64)]) {
        self.family(name, "gauge", help);
        self.samples(name, rows);
    }

    fn counter(&mut self, name: &str, help: &str, rows: &[(String, f64)]) {
        self.family(name, "counter", help);
        self.samples(name, rows);
    }

    fn histogram_family(
        &mut self,
        name: &str,
        help: &str,
        rows: impl Iterator<Item = (String, Buckets)>,
    ) {
        self.family(name, "histogram", help);
        for (labels, b) in rows {
            for (le, n) in &b.cumulative {
                let _ = writeln!(self.out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                b.count
            );
            let _ = writeln!(self.out, "{name}_sum{{{labels}}} {}", b.sum_seconds);
            let _ = writeln!(self.out, "{name}_count{{{labels}}} {}", b.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_percentiles_are_bucket_upper_bounds() {
        let mut log2 = [0u64; LOG2_BUCKETS];
        log2[10] = 99; // [1024, 2048) ns
        log2[20] = 1; // [~1 ms, ~2 ms)
        let p = log2_percentiles(&log2);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, 2048);
        assert_eq!(p.p99, 2048);
        assert_eq!(p.max, 1 << 21);
        assert_eq!(log2_percentiles(&[0; LOG2_BUCKETS]), Percentiles::default());
    }

    #[test]
    fn log2_buckets_are_cumulative_and_end_at_the_count() {
        let mut log2 = [0u64; LOG2_BUCKETS];
        log2[0] = 3;
        log2[5] = 2;
        log2[LOG2_BUCKETS - 1] = 1;
        let b = log2_buckets(&log2);
        assert_eq!(b.count, 6);
        assert!(
            b.cumulative
                .windows(2)
                .all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0)
        );
        assert_eq!(b.cumulative.len(), LOG2_BUCKETS - 1);
        assert_eq!(
            b.cumulative.last().unwrap().1,
            5,
            "the open last bucket is only in +Inf"
        );
        assert_eq!(b.cumulative[0], (2e-9, 3));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_shard_that_stops_reporting_is_unhealthy() {
        let mut plane = Plane::new(vec![0, 1], None, Duration::from_millis(10));
        assert_eq!(
            plane.health(),
            Ok(()),
            "a starting shard has time to report"
        );
        plane.since -= Duration::from_secs(60);
        assert!(
            plane
                .health()
                .unwrap_err()
                .contains("shard 0 has not reported")
        );
        let snap = |shard| {
            crate::stats::CoreStats::new().snapshot(
                shard,
                shard,
                1,
                Vec::new(),
                verdict_net::LoopStats::default(),
            )
        };
        let long_ago = Instant::now() - Duration::from_secs(60);
        plane.ingest(snap(0), Instant::now());
        plane.ingest(snap(1), long_ago);
        let why = plane.health().unwrap_err();
        assert!(why.contains("shard 1 last reported"), "{why}");
        assert!(!why.contains("shard 0"), "{why}");
        plane.ingest(snap(1), Instant::now());
        assert_eq!(plane.health(), Ok(()));
        assert!(plane.readiness().is_err(), "not ready before set_ready");
        plane.set_ready(true);
        assert!(plane.readiness().is_ok());
        plane.set_draining();
        assert!(plane.readiness().unwrap_err().contains("draining"));
    }

    #[test]
    fn probes_turned_off_say_so_for_every_group() {
        let plane = Plane::new(vec![0], None, Duration::from_secs(1));
        assert_eq!(plane.probe_states().len(), verdict_probes::Group::ALL.len());
        assert!(
            plane
                .probe_states()
                .iter()
                .all(|p| !p.active && p.reason.contains("enabled = false"))
        );
    }
}
