//! Per-core stats. Each shard owns one `CoreStats` (plain fields in a `RefCell`, never
//! shared, never atomic). Snapshots leave a shard two ways: every `stats_interval_ms` over
//! a bounded thingbuf channel to the control thread (the admin endpoints read those), and
//! fresh over the mesh for a stats request. Totals merge histograms (percentiles are never
//! averaged).

use hdrhistogram::Histogram;

use crate::loop_time::LoopTime;
use serde_json::json;
use verdict_net::{
    ErrorCode, ErrorCount, KernelStats, LoopStats, ModelStats, Percentiles, ShardStats, StatsReply,
};

/// Highest latency the histogram tracks exactly, ns (larger values saturate here).
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Highest batch size tracked.
const BATCH_MAX: u64 = 1 << 20;
/// Slots for error counters, indexed by code.
const ERROR_SLOTS: usize = 16;
/// Highest batch time tracked, ns (larger values saturate here).
const BATCH_NS_MAX: u64 = 10_000_000_000;

fn batch_ns_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, BATCH_NS_MAX, 2).expect("valid bounds")
}

/// One shard's live counters.
pub struct CoreStats {
    pub requests: u64,
    pub responses: u64,
    pub events: u64,
    pub errors: u64,
    errors_by_code: [u64; ERROR_SLOTS],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_rejected: u64,
    pub tls_handshakes_failed: u64,
    pub mesh_events_sent: u64,
    pub mesh_events_decided: u64,
    pub mesh_events_recorded: u64,
    batch_requests: Histogram<u64>,
    batch_events: Histogram<u64>,
    latency_ns: Histogram<u64>,
    /// Time to answer one read's worth of requests.
    batch_ns: Histogram<u64>,
    polls: u64,
    poll_ns_max: u64,
    stalls: u64,
    pub stall_threshold_ns: u64,
    /// The executor's wall time split (busy, io_poll, parked), added up from its reads.
    pub loop_time: LoopTime,
}

impl Default for CoreStats {
    fn default() -> Self {
        Self::new()
    }
}

impl CoreStats {
    pub fn new() -> CoreStats {
        CoreStats {
            requests: 0,
            responses: 0,
            events: 0,
            errors: 0,
            errors_by_code: [0; ERROR_SLOTS],
            bytes_in: 0,
            bytes_out: 0,
            connections_open: 0,
            connections_accepted: 0,
            connections_rejected: 0,
            tls_handshakes_failed: 0,
            mesh_events_sent: 0,
            mesh_events_decided: 0,
            mesh_events_recorded: 0,
            batch_requests: Histogram::new_with_bounds(1, BATCH_MAX, 2).expect("valid bounds"),
            batch_events: Histogram::new_with_bounds(1, BATCH_MAX, 2).expect("valid bounds"),
            latency_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid bounds"),
            batch_ns: batch_ns_histogram(),
            polls: 0,
            poll_ns_max: 0,
            stalls: 0,
            stall_threshold_ns: u64::MAX,
            loop_time: LoopTime::default(),
        }
    }

    pub fn record_batch_ns(&mut self, ns: u64) {
        self.batch_ns.saturating_record(ns.max(1));
    }

    /// One task ran `ns` between two yields.
    pub fn record_poll_ns(&mut self, ns: u64) {
        self.polls += 1;
        self.poll_ns_max = self.poll_ns_max.max(ns);
        if ns > self.stall_threshold_ns {
            self.stalls += 1;
        }
    }

    pub fn record_error(&mut self, code: ErrorCode) {
        self.errors += 1;
        self.errors_by_code[code as usize % ERROR_SLOTS] += 1;
    }

    pub fn record_latency_ns(&mut self, ns: u64) {
        self.latency_ns.saturating_record(ns.max(1));
    }

    pub fn record_batch_requests(&mut self, requests: u64) {
        if requests > 0 {
            self.batch_requests.saturating_record(requests);
        }
    }

    pub fn record_batch_events(&mut self, events: u64) {
        self.batch_events.saturating_record(events.max(1));
    }

    /// A copy to send to another thread, with each model's stats and call-time histogram
    /// and the executor's time split (`runtime`, whose batch and poll fields this fills).
    pub fn snapshot(
        &self,
        shard: u32,
        cpu: u32,
        epoch: u64,
        models: Vec<(ModelStats, Histogram<u64>)>,
        runtime: LoopStats,
    ) -> Snapshot {
        let (models, call_ns): (Vec<_>, Vec<_>) = models.into_iter().unzip();
        let errors_by_code = ErrorCode::ALL
            .into_iter()
            .map(|c| ErrorCount {
                code: c as u16,
                count: self.errors_by_code[c as usize],
            })
            .filter(|e| e.count > 0)
            .collect();
        Snapshot {
            stats: ShardStats {
                shard,
                cpu,
                epoch,
                requests: self.requests,
                responses: self.responses,
                events: self.events,
                errors: self.errors,
                errors_by_code,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                connections_open: self.connections_open,
                connections_accepted: self.connections_accepted,
                connections_rejected: self.connections_rejected,
                tls_handshakes_failed: self.tls_handshakes_failed,
                mesh_events_sent: self.mesh_events_sent,
                mesh_events_decided: self.mesh_events_decided,
                mesh_events_recorded: self.mesh_events_recorded,
                batch_requests: percentiles(&self.batch_requests),
                batch_events: percentiles(&self.batch_events),
                latency_ns: percentiles(&self.latency_ns),
                models,
                runtime: LoopStats {
                    batch_ns: percentiles(&self.batch_ns),
                    polls: self.polls,
                    poll_ns_max: self.poll_ns_max,
                    stalls: self.stalls,
                    stall_threshold_ns: self.stall_threshold_ns,
                    ..runtime
                },
                kernel: KernelStats::default(),
                // The decision log's counters are the log's (`Shard::snapshot` fills them).
                ..ShardStats::default()
            },
            batch_requests: self.batch_requests.clone(),
            batch_events: self.batch_events.clone(),
            latency_ns: self.latency_ns.clone(),
            batch_ns: self.batch_ns.clone(),
            call_ns,
        }
    }
}

/// One shard's stats at a moment, with its histograms so totals can be merged exactly.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub stats: ShardStats,
    batch_requests: Histogram<u64>,
    batch_events: Histogram<u64>,
    latency_ns: Histogram<u64>,
    batch_ns: Histogram<u64>,
    /// Per model, aligned with `stats.models`.
    call_ns: Vec<Histogram<u64>>,
}

impl Snapshot {
    /// Server-side latency, ns.
    pub fn latency_ns(&self) -> &Histogram<u64> {
        &self.latency_ns
    }

    /// Time per batch, ns.
    pub fn batch_ns(&self) -> &Histogram<u64> {
        &self.batch_ns
    }

    /// Per model (aligned with `stats.models`): time per call, ns.
    pub fn call_ns(&self) -> &[Histogram<u64>] {
        &self.call_ns
    }
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Orders snapshots by shard and adds the total row (kernel columns and probe states are
/// the metrics plane's to add).
pub fn merge(mut snaps: Vec<Snapshot>) -> StatsReply {
    snaps.sort_by_key(|s| s.stats.shard);
    let mut batch_ns = batch_ns_histogram();
    let mut batch_requests = Histogram::new_with_bounds(1, BATCH_MAX, 2).expect("valid bounds");
    let mut batch_events = Histogram::new_with_bounds(1, BATCH_MAX, 2).expect("valid bounds");
    let mut latency_ns = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid bounds");
    let mut total = ShardStats {
        shard: u32::MAX,
        cpu: u32::MAX,
        ..ShardStats::default()
    };
    let mut errors = [0u64; ERROR_SLOTS];
    // Per model name: the summed row and the merged call-time histogram.
    let mut models: Vec<(ModelStats, Histogram<u64>)> = Vec::new();
    for s in &snaps {
        for (m, h) in s.stats.models.iter().zip(&s.call_ns) {
            let at = match models.iter().position(|(t, _)| t.name == m.name) {
                Some(at) => at,
                None => {
                    let row = ModelStats {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        ..ModelStats::default()
                    };
                    models.push((row, Histogram::new_from(h)));
                    models.len() - 1
                }
            };
            let (t, th) = &mut models[at];
            t.calls += m.calls;
            t.rows += m.rows;
            t.traps += m.traps;
            t.timeouts += m.timeouts;
            t.errors += m.errors;
            t.exhausted_rows += m.exhausted_rows;
            t.instances_ready += m.instances_ready;
            // Histograms of one model have the same bounds everywhere.
            let _ = th.add(h);
        }
        let t = &mut total;
        let x = &s.stats;
        t.epoch = t.epoch.max(x.epoch);
        t.requests += x.requests;
        t.responses += x.responses;
        t.events += x.events;
        t.errors += x.errors;
        t.bytes_in += x.bytes_in;
        t.bytes_out += x.bytes_out;
        t.connections_open += x.connections_open;
        t.connections_accepted += x.connections_accepted;
        t.connections_rejected += x.connections_rejected;
        t.tls_handshakes_failed += x.tls_handshakes_failed;
        merge_rules(&mut t.rules, &x.rules);
        t.mesh_events_sent += x.mesh_events_sent;
        t.mesh_events_decided += x.mesh_events_decided;
        t.mesh_events_recorded += x.mesh_events_recorded;
        t.log_records += x.log_records;
        t.log_bytes_written += x.log_bytes_written;
        t.log_fsyncs += x.log_fsyncs;
        t.log_fsync_ns_total += x.log_fsync_ns_total;
        t.log_unlogged += x.log_unlogged;
        t.log_refused += x.log_refused;
        t.log_write_errors += x.log_write_errors;
        t.log_segments += x.log_segments;
        let (tr, xr) = (&mut t.runtime, &x.runtime);
        tr.uptime_ns = tr.uptime_ns.max(xr.uptime_ns);
        tr.busy_ns += xr.busy_ns;
        tr.io_poll_ns += xr.io_poll_ns;
        tr.parked_ns += xr.parked_ns;
        tr.polls += xr.polls;
        tr.poll_ns_max = tr.poll_ns_max.max(xr.poll_ns_max);
        tr.stalls += xr.stalls;
        tr.stall_threshold_ns = xr.stall_threshold_ns;
        for e in &x.errors_by_code {
            errors[e.code as usize % ERROR_SLOTS] += e.count;
        }
        // Same bounds everywhere, so adding cannot fail.
        batch_requests.add(&s.batch_requests).expect("same bounds");
        batch_events.add(&s.batch_events).expect("same bounds");
        latency_ns.add(&s.latency_ns).expect("same bounds");
        batch_ns.add(&s.batch_ns).expect("same bounds");
    }
    total.errors_by_code = ErrorCode::ALL
        .into_iter()
        .map(|c| ErrorCount {
            code: c as u16,
            count: errors[c as usize],
        })
        .filter(|e| e.count > 0)
        .collect();
    total.batch_requests = percentiles(&batch_requests);
    total.batch_events = percentiles(&batch_events);
    total.latency_ns = percentiles(&latency_ns);
    total.runtime.batch_ns = percentiles(&batch_ns);
    models.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    total.models = models
        .into_iter()
        .map(|(mut m, h)| {
            m.call_ns = percentiles(&h);
            m
        })
        .collect();
    StatsReply {
        shards: snaps.into_iter().map(|s| s.stats).collect(),
        total,
        probes: Vec::new(),
    }
}

fn percentiles_json(p: &Percentiles) -> serde_json::Value {
    json!({ "count": p.count, "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max })
}

fn row_json(s: &ShardStats) -> serde_json::Value {
    let errors: serde_json::Map<String, serde_json::Value> = s
        .errors_by_code
        .iter()
        .map(|e| {
            let name = ErrorCode::from_u16(e.code).map_or("unknown", |c| c.name());
            (name.to_string(), json!(e.count))
        })
        .collect();
    json!({
        "shard": s.shard, "cpu": s.cpu, "epoch": s.epoch,
        "requests": s.requests, "responses": s.responses, "events": s.events,
        "errors": s.errors, "errors_by_code": errors,
        "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
        "connections_open": s.connections_open,
        "connections_accepted": s.connections_accepted,
        "connections_rejected": s.connections_rejected,
        "tls_handshakes_failed": s.tls_handshakes_failed,
        "mesh_events_sent": s.mesh_events_sent,
        "mesh_events_decided": s.mesh_events_decided,
        "mesh_events_recorded": s.mesh_events_recorded,
        "log": log_json(s),
        "rules": s.rules.iter().map(|r| json!({
            "name": r.name, "shadow": r.shadow, "fired": r.fired,
        })).collect::<Vec<_>>(),
        "batch_requests": percentiles_json(&s.batch_requests),
        "batch_events": percentiles_json(&s.batch_events),
        "latency_ns": percentiles_json(&s.latency_ns),
        "runtime": runtime_json(&s.runtime),
        "kernel": kernel_json(&s.kernel),
        "models": s.models.iter().map(|m| json!({
            "name": m.name, "version": m.version, "calls": m.calls, "rows": m.rows,
            "traps": m.traps, "timeouts": m.timeouts, "errors": m.errors,
            "exhausted_rows": m.exhausted_rows, "instances_ready": m.instances_ready,
            "call_ns": percentiles_json(&m.call_ns),
        })).collect::<Vec<_>>(),
    })
}

fn runtime_json(r: &LoopStats) -> serde_json::Value {
    json!({
        "uptime_ns": r.uptime_ns, "busy_ns": r.busy_ns, "io_poll_ns": r.io_poll_ns,
        "parked_ns": r.parked_ns, "batch_ns": percentiles_json(&r.batch_ns),
        "polls": r.polls, "poll_ns_max": r.poll_ns_max, "stalls": r.stalls,
        "stall_threshold_ns": r.stall_threshold_ns,
    })
}

fn kernel_json(k: &KernelStats) -> serde_json::Value {
    json!({
        "runq_delay_ns": percentiles_json(&k.runq_delay_ns),
        "runq_delay_ns_log2": k.runq_delay_ns_log2,
        "io_uring_submits": k.io_uring_submits,
        "io_uring_completions": k.io_uring_completions,
        "tcp_retransmits": k.tcp_retransmits,
        "softirqs": k.softirqs, "softirq_ns": k.softirq_ns,
        "syscall_ns": percentiles_json(&k.syscall_ns),
        "syscall_ns_log2": k.syscall_ns_log2,
    })
}

/// The JSON form of a stats reply: what `verdict stats --json` prints and the admin
/// endpoint `/stats` serves.
pub fn reply_json(reply: &StatsReply) -> serde_json::Value {
    let mut total = row_json(&reply.total);
    total["shard"] = json!("total");
    total["cpu"] = json!(null);
    let probes: Vec<serde_json::Value> = reply
        .probes
        .iter()
        .map(|p| json!({ "group": p.group, "active": p.active, "reason": p.reason }))
        .collect();
    json!({
        "shards": reply.shards.iter().map(row_json).collect::<Vec<_>>(),
        "total": total,
        "probes": probes,
    })
}

/// The decision log's counters of a shard (or the total), under `"log"`.
fn log_json(s: &ShardStats) -> serde_json::Value {
    serde_json::json!({
        "records": s.log_records,
        "bytes_written": s.log_bytes_written,
        "fsyncs": s.log_fsyncs,
        "fsync_ns_total": s.log_fsync_ns_total,
        "unlogged": s.log_unlogged,
        "refused": s.log_refused,
        "write_errors": s.log_write_errors,
        "segments": s.log_segments,
    })
}

/// One core's per-rule fire counts (shadow rules included). Counted per batch by index into
/// the rule set that decided it (no allocation, no lookup); when a batch comes from another
/// rule set, the counts so far are folded into `earlier` by name, so a rule that stays
/// across a reload keeps counting.
#[derive(Default)]
pub struct RuleCounts {
    /// The rule set (`RuleSet::uid`) `counts` is indexed for, and its rule names.
    uid: Option<u64>,
    names: Vec<Box<str>>,
    counts: Vec<u64>,
    shadow: Vec<bool>,
    /// Counts of rules of earlier sets: (name, shadow) -> fired.
    earlier: std::collections::BTreeMap<(String, bool), u64>,
}

impl RuleCounts {
    /// Counts the rules `decided` fired under `rules`.
    pub fn count(&mut self, rules: &verdict_rules::RuleSet, decided: &crate::decide::Decided) {
        if self.uid != Some(rules.uid()) {
            self.fold();
            let n = rules.shape().rules;
            self.uid = Some(rules.uid());
            self.names = (0..n as u32).map(|i| rules.rule_name(i).into()).collect();
            self.counts = vec![0; n];
            self.shadow = vec![false; n];
        }
        for v in &decided.verdicts {
            for &r in &decided.rules[v.fired.clone()] {
                self.counts[r as usize] += 1;
            }
            for &r in &decided.rules[v.shadow.clone()] {
                self.counts[r as usize] += 1;
                self.shadow[r as usize] = true;
            }
        }
    }

    fn fold(&mut self) {
        for ((name, &fired), &shadow) in self.names.iter().zip(&self.counts).zip(&self.shadow) {
            if fired > 0 {
                *self.earlier.entry((name.to_string(), shadow)).or_default() += fired;
            }
        }
        self.counts.iter_mut().for_each(|c| *c = 0);
    }

    /// Every rule that fired, by name (allocates: stats only).
    pub fn snapshot(&self) -> Vec<verdict_net::RuleCount> {
        let mut all = self.earlier.clone();
        for ((name, &fired), &shadow) in self.names.iter().zip(&self.counts).zip(&self.shadow) {
            if fired > 0 {
                *all.entry((name.to_string(), shadow)).or_default() += fired;
            }
        }
        all.into_iter()
            .map(|((name, shadow), fired)| verdict_net::RuleCount {
                name,
                shadow,
                fired,
            })
            .collect()
    }
}

/// Sums per-rule counts by (name, shadow).
fn merge_rules(into: &mut Vec<verdict_net::RuleCount>, from: &[verdict_net::RuleCount]) {
    for r in from {
        match into
            .iter_mut()
            .find(|t| t.name == r.name && t.shadow == r.shadow)
        {
            Some(t) => t.fired += r.fired,
            None => into.push(r.clone()),
        }
    }
    into.sort_by(|a, b| a.name.cmp(&b.name).then(a.shadow.cmp(&b.shadow)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_merge_histograms_not_percentiles() {
        let mut fast = CoreStats::new();
        let mut slow = CoreStats::new();
        for _ in 0..990 {
            fast.record_latency_ns(1_000);
        }
        for _ in 0..10 {
            slow.record_latency_ns(1_000_000);
        }
        fast.requests = 990;
        slow.requests = 10;
        fast.record_error(ErrorCode::BadField);
        slow.record_error(ErrorCode::BadField);
        slow.record_error(ErrorCode::Overloaded);
        let reply = merge(vec![
            slow.snapshot(1, 1, 0, Vec::new(), LoopStats::default()),
            fast.snapshot(0, 0, 0, Vec::new(), LoopStats::default()),
        ]);
        assert_eq!(reply.shards[0].shard, 0, "sorted by shard");
        assert_eq!(reply.total.requests, 1000);
        assert_eq!(reply.total.latency_ns.count, 1000);
        // 99% of all requests took ~1 us: the merged p50 and p99 say so, and the max is 1 ms.
        assert!(reply.total.latency_ns.p50 < 1_100);
        assert!(reply.total.latency_ns.p99 < 1_100);
        assert!(reply.total.latency_ns.max >= 999_000);
        assert_eq!(
            reply.total.errors_by_code,
            vec![
                ErrorCount { code: 6, count: 2 },
                ErrorCount { code: 8, count: 1 }
            ]
        );
        assert_eq!(reply.total.errors, 3);
    }
}
