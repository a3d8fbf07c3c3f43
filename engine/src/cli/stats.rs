//! `verdict stats`: one row per core plus the total; `--json` for machines.

use std::process::ExitCode;

use serde_json::json;
use verdict_net::{ErrorCode, Percentiles, ShardStats, StatsReply};

use super::connect;

pub fn run(addr: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let reply = connect(addr)?.stats()?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(&reply))?);
    } else {
        print!("{}", table(&reply));
    }
    Ok(ExitCode::SUCCESS)
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
        "batch_requests": percentiles_json(&s.batch_requests),
        "batch_events": percentiles_json(&s.batch_events),
        "latency_ns": percentiles_json(&s.latency_ns),
        "models": s.models.iter().map(|m| json!({
            "name": m.name, "version": m.version, "calls": m.calls, "rows": m.rows,
            "traps": m.traps, "timeouts": m.timeouts, "errors": m.errors,
            "exhausted_rows": m.exhausted_rows, "instances_ready": m.instances_ready,
            "call_ns": percentiles_json(&m.call_ns),
        })).collect::<Vec<_>>(),
    })
}

/// The JSON form (also what the admin endpoint will serve).
pub fn to_json(reply: &StatsReply) -> serde_json::Value {
    let mut total = row_json(&reply.total);
    total["shard"] = json!("total");
    total["cpu"] = json!(null);
    json!({ "shards": reply.shards.iter().map(row_json).collect::<Vec<_>>(), "total": total })
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
    out
}
