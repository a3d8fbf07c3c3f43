//! Turning an [`Outcome`] into what people and machines read: a table row, JSON, and an
//! HdrHistogram percentile-distribution (`.hgrm`) file.

use std::fmt::Write as _;

use serde_json::json;

use crate::load::Outcome;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LatencyUs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn latency_us(o: &Outcome) -> LatencyUs {
    let h = &o.latency_ns;
    if h.is_empty() {
        return LatencyUs {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p999: 0.0,
            max: 0.0,
            mean: 0.0,
        };
    }
    LatencyUs {
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: h.mean() / 1000.0,
    }
}

pub fn to_json(o: &Outcome, offered_rps: Option<f64>) -> serde_json::Value {
    let errors: serde_json::Map<String, serde_json::Value> = o
        .errors_by_code
        .iter()
        .map(|(c, n)| (c.to_string(), json!(n)))
        .collect();
    json!({
        "offered_rps": offered_rps,
        "achieved_rps": o.achieved_rps(),
        "sent": o.sent,
        "completed": o.completed,
        "errors": o.errors,
        "errors_by_code": errors,
        "timeouts": o.timeouts,
        "lost": o.lost,
        "connection_failures": o.connection_failures,
        "window_s": o.window.as_secs_f64(),
        "latency_us": latency_us(o),
    })
}

pub const TABLE_HEADER: &str = "| offered rps | achieved rps | errors | timeouts | lost | p50 us | p90 us | p99 us | p999 us | max us |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

pub fn table_row(o: &Outcome, offered_rps: Option<f64>) -> String {
    let l = latency_us(o);
    let offered = offered_rps.map_or("closed loop".to_string(), |r| format!("{r:.0}"));
    format!(
        "| {offered} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
        o.achieved_rps(),
        o.errors,
        o.timeouts,
        o.lost,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max
    )
}

/// The classic HdrHistogram percentile distribution, values in microseconds.
pub fn hgrm(o: &Outcome) -> String {
    let h = &o.latency_ns;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - q))
        } else {
            "           inf".into()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {}",
            us(v.value_iterated_to()),
            q,
            v.count_since_last_iteration(),
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        us(h.max()),
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_lists_percentiles_up_to_the_max() {
        let mut o = crate::load::Outcome::test_empty();
        for v in 1..=1000u64 {
            o.latency_ns.record(v * 1000).unwrap();
        }
        let text = hgrm(&o);
        assert!(text.starts_with("       Value     Percentile"));
        // HdrHistogram reports the highest equivalent value of the max's bucket.
        assert!(text.contains("#[Max     =     1000."), "{text}");
        assert!(text.contains("Total count    =         1000"), "{text}");
        let l = latency_us(&o);
        assert!(
            (l.p50 - 500.0).abs() < 2.0 && (l.p99 - 990.0).abs() < 2.0,
            "{l:?}"
        );
    }
}
