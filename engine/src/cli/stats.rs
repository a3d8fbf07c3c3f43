//! `verdict stats`: one row per core plus the total, the cores' loop and kernel columns,
//! the models; `--json` for machines; `--watch` to refresh every second.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use verdict_net::{ErrorCode, ShardStats, StatsReply};

use crate::stats::reply_json;

use super::connect;

/// `watch`: `None` prints once; `Some(0)` refreshes every second until interrupted;
/// `Some(n)` prints n times.
pub fn run(
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    as_json: bool,
    watch: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, tls)?;
    let rounds = match watch {
        None => 1,
        Some(0) => u64::MAX,
        Some(n) => n,
    };
    let mut next = Instant::now();
    for round in 0..rounds {
        let reply = client.stats()?;
        match (as_json, watch.is_some()) {
            // One JSON document per line, so a watcher can pipe it.
            (true, true) => println!("{}", serde_json::to_string(&reply_json(&reply))?),
            (true, false) => println!("{}", serde_json::to_string_pretty(&reply_json(&reply))?),
            // Clear the screen and print from the top.
            (false, true) => print!("\x1b[2J\x1b[H{addr} every 1 s\n{}", table(&reply)),
            (false, false) => print!("{}", table(&reply)),
        }
        if round + 1 < rounds {
            next += Duration::from_secs(1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// The human table.
pub fn table(reply: &StatsReply) -> String {
    let mut out = format!(
        "{:>5} {:>4} {:>5} {:>10} {:>10} {:>7} {:>11} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        "shard",
        "cpu",
        "epoch",
        "requests",
        "events",
        "errors",
        "conn o/a/r",
        "MiB in",
        "MiB out",
        "p50 us",
        "p90 us",
        "p99 us",
        "p999 us",
        "max us",
        "batch"
    );
    let row = |s: &ShardStats, name: String, cpu: String| {
        let l = &s.latency_ns;
        format!(
            "{:>5} {:>4} {:>5} {:>10} {:>10} {:>7} {:>11} {:>9.2} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
            name,
            cpu,
            s.epoch,
            s.requests,
            s.events,
            s.errors,
            format!(
                "{}/{}/{}",
                s.connections_open, s.connections_accepted, s.connections_rejected
            ),
            s.bytes_in as f64 / (1 << 20) as f64,
            s.bytes_out as f64 / (1 << 20) as f64,
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p999),
            us(l.max),
            s.batch_requests.p50,
        )
    };
    for s in &reply.shards {
        out.push_str(&row(s, s.shard.to_string(), s.cpu.to_string()));
    }
    out.push_str(&row(&reply.total, "total".into(), "-".into()));
    if !reply.total.errors_by_code.is_empty() {
        let list: Vec<String> = reply
            .total
            .errors_by_code
            .iter()
            .map(|e| {
                let name = ErrorCode::from_u16(e.code).map_or("unknown", |c| c.name());
                format!("{name} ({}) = {}", e.code, e.count)
            })
            .collect();
        out.push_str(&format!("errors by code: {}\n", list.join(", ")));
    }
    out.push_str(
        "latency: server side, frame complete -> response queued; batch: requests per read (p50)\n",
    );
    out.push_str(&cores(reply));
    let with_models: Vec<&ShardStats> = reply
        .shards
        .iter()
        .filter(|s| !s.models.is_empty())
        .collect();
    if !with_models.is_empty() {
        out.push_str(&format!(
            "\n{:>5} {:<16} {:>10} {:>10} {:>6} {:>8} {:>6} {:>9} {:>5} {:>8} {:>8}\n",
            "shard",
            "model",
            "calls",
            "rows",
            "traps",
            "timeouts",
            "errors",
            "exhausted",
            "ready",
            "p50 us",
            "p99 us"
        ));
        let rows = with_models
            .iter()
            .flat_map(|s| s.models.iter().map(move |m| (s.shard.to_string(), m)))
            .chain(reply.total.models.iter().map(|m| ("total".to_string(), m)));
        for (shard, m) in rows {
            out.push_str(&format!(
                "{:>5} {:<16} {:>10} {:>10} {:>6} {:>8} {:>6} {:>9} {:>5} {:>8} {:>8}\n",
                shard,
                m.name,
                m.calls,
                m.rows,
                m.traps,
                m.timeouts,
                m.errors,
                m.exhausted_rows,
                m.instances_ready,
                us(m.call_ns.p50),
                us(m.call_ns.p99)
            ));
        }
        out.push_str("models: one call scores a batch's events; exhausted: events given the fallback with no instance ready\n");
    }
    if !reply.total.rules.is_empty() {
        out.push_str(&format!(
            "\n{:<32} {:>6} {:>12}\n",
            "rule (all shards)", "shadow", "fired"
        ));
        for r in &reply.total.rules {
            let shadow = if r.shadow { "yes" } else { "" };
            out.push_str(&format!("{:<32} {:>6} {:>12}\n", r.name, shadow, r.fired));
        }
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}", part as f64 * 100.0 / whole as f64)
}

/// Where each core's time goes (its own loop) and what the kernel did on its CPU.
fn cores(reply: &StatsReply) -> String {
    let mut out = format!(
        "\n{:>5} {:>4} {:>6} {:>7} {:>9} {:>9} {:>7} | {:>8} {:>8} {:>10} {:>10} {:>8} {:>10}\n",
        "shard",
        "cpu",
        "busy%",
        "parked%",
        "batch p99",
        "poll max",
        "stalls",
        "runq p50",
        "runq p99",
        "uring sub",
        "uring cmp",
        "retrans",
        "softirq ms"
    );
    let row = |s: &ShardStats, name: String, cpu: String| {
        let (r, k) = (&s.runtime, &s.kernel);
        let runq = |ns: u64| {
            if k.runq_delay_ns.count == 0 {
                "-".into()
            } else {
                us(ns)
            }
        };
        format!(
            "{:>5} {:>4} {:>6} {:>7} {:>9} {:>9} {:>7} | {:>8} {:>8} {:>10} {:>10} {:>8} {:>10.1}\n",
            name,
            cpu,
            percent(r.busy_ns, r.uptime_ns),
            percent(r.parked_ns, r.uptime_ns),
            us(r.batch_ns.p99),
            us(r.poll_ns_max),
            r.stalls,
            runq(k.runq_delay_ns.p50),
            runq(k.runq_delay_ns.p99),
            k.io_uring_submits,
            k.io_uring_completions,
            k.tcp_retransmits,
            k.softirq_ns as f64 / 1e6,
        )
    };
    for s in &reply.shards {
        out.push_str(&row(s, s.shard.to_string(), s.cpu.to_string()));
    }
    out.push_str(&row(&reply.total, "total".into(), "-".into()));
    let stall_us = reply.total.runtime.stall_threshold_ns / 1000;
    out.push_str(&format!(
        "core: busy = running tasks, parked = neither running nor polling (waiting in io_uring, or preempted), of uptime; batch p99 and poll max in us; \
         stalls: task polls over {stall_us} us\n\
         kernel (eBPF): runq = run-queue delay of the engine's threads in us (log2 buckets); \
         uring = io_uring ops; retrans and softirq are the CPU's, every process's\n"
    ));
    let states: Vec<String> = reply
        .probes
        .iter()
        .map(|p| {
            if p.active {
                format!("{} on", p.group)
            } else if p.reason.starts_with("off") {
                format!("{} {}", p.group, p.reason)
            } else {
                format!("{} off: {}", p.group, p.reason)
            }
        })
        .collect();
    if !states.is_empty() {
        out.push_str(&format!("probes: {}\n", states.join("; ")));
    }
    out
}
