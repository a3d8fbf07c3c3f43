//! The latency baseline `scripts/latency.sh` runs: start the reference echo server, measure
//! its closed-loop ceiling; start the engine (one shard), measure its closed-loop maximum and
//! an open-loop sweep at 10%..90% of it, plus the reference at 50%; then write
//! `summary.md`, `summary.json`, one `.hgrm` per run and `latency.png` into `out`.
//!
//! Server and generator are pinned to different CPUs. On a 2-core machine that is all of it:
//! the numbers are for one engine core against one client core.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use crate::events::{EventGen, encode_events, events_for_shard};
use crate::load::{self, Outcome, Plan, Target, Workload};
use crate::report;

/// What to run.
pub struct Sweep {
    pub verdict_bin: PathBuf,
    pub echo_bin: PathBuf,
    pub out: PathBuf,
    pub quick: bool,
    pub server_cpu: usize,
    pub client_cpu: usize,
    pub seed: u64,
}

/// Durations and shapes, quick or full.
struct Settings {
    warmup: Duration,
    closed: Duration,
    step: Duration,
    fractions: Vec<f64>,
    /// Unpipelined: many connections, one request each in flight.
    conns_unpipelined: usize,
    /// Pipelined: fewer connections, `depth` in flight each.
    conns_pipelined: usize,
    depth_pipelined: usize,
    conns_open: usize,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        let (warmup, closed, step, fractions) = if quick {
            (
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(2),
                vec![0.1, 0.3, 0.5, 0.7, 0.9],
            )
        } else {
            (
                Duration::from_secs(2),
                Duration::from_secs(5),
                Duration::from_secs(6),
                (1..=9).map(|i| i as f64 / 10.0).collect(),
            )
        };
        Settings {
            warmup,
            closed,
            step,
            fractions,
            conns_unpipelined: 32,
            conns_pipelined: 8,
            depth_pipelined: 16,
            conns_open: 32,
        }
    }
}

/// A child server, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first so the engine drains cleanly; then make sure.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command`, waits for its ready line, takes `port=` from it.
fn start(mut command: Command, what: &str) -> anyhow::Result<Server> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let port: u16 = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .with_context(|| format!("{what} printed no ready line (got {line:?})"))?
        .parse()?;
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    Ok(Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

fn plan(
    target: &Target,
    s: &Settings,
    cpu: usize,
    conns: usize,
    depth: usize,
    rate: Option<f64>,
    duration: Duration,
) -> Plan {
    Plan {
        targets: vec![target.clone()],
        cpus: vec![Some(cpu)],
        connections_per_thread: conns,
        depth,
        rate_rps: rate,
        warmup: s.warmup,
        duration,
        timeout: Duration::from_secs(5),
        workload: Workload::Evaluate,
        tls: None,
        stamp_now: false,
    }
}

impl Sweep {
    /// The reference server, pinned to the server CPU, on a free port.
    fn echo_command(&self) -> Command {
        let mut c = Command::new(&self.echo_bin);
        c.args([
            "--addr",
            "127.0.0.1:0",
            "--cpu",
            &self.server_cpu.to_string(),
        ]);
        c
    }

    pub fn run(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.out)?;
        let s = Settings::new(self.quick);
        let mut events = EventGen::new(self.seed);
        let mut next = || events.next_event();
        let pool = Arc::new(encode_events(&events_for_shard(&mut next, None, 4096)));
        let measure = |name: &str,
                       target: &Target,
                       conns,
                       depth,
                       rate: Option<f64>,
                       dur|
         -> anyhow::Result<Outcome> {
            let o = load::run(&plan(target, &s, self.client_cpu, conns, depth, rate, dur))?;
            eprintln!(
                "  {name:<28} achieved {:>9.0} rps  p50 {:>8.1} us  p99 {:>8.1} us  errors {} timeouts {} lost {}",
                o.achieved_rps(),
                report::latency_us(&o).p50,
                report::latency_us(&o).p99,
                o.errors,
                o.timeouts,
                o.lost
            );
            std::fs::write(self.out.join(format!("{name}.hgrm")), report::hgrm(&o))?;
            Ok(o)
        };

        let closed_pair = |server: &str, target: &Target| -> anyhow::Result<(Outcome, Outcome)> {
            let unpiped = measure(
                &format!("{server}-closed-depth1"),
                target,
                s.conns_unpipelined,
                1,
                None,
                s.closed,
            )?;
            let piped = measure(
                &format!("{server}-closed-depth{}", s.depth_pipelined),
                target,
                s.conns_pipelined,
                s.depth_pipelined,
                None,
                s.closed,
            )?;
            Ok((unpiped, piped))
        };

        eprintln!(
            "reference echo server on cpu {}, generator on cpu {}",
            self.server_cpu, self.client_cpu
        );
        let echo = start(self.echo_command(), "verdict-echo")?;
        let echo_target = Target {
            addr: echo.addr,
            pool: pool.clone(),
        };
        let (echo_unpiped, echo_piped) = closed_pair("echo", &echo_target)?;
        drop(echo);

        eprintln!(
            "engine (1 shard) on cpu {}, generator on cpu {}",
            self.server_cpu, self.client_cpu
        );
        let topo = self.out.join("engine-shards.toml");
        std::fs::write(
            &topo,
            format!(
                "[listen]\naddress = \"127.0.0.1\"\nport = 0\nshard_port_base = 0\n[[shard]]\ncpu = {}\n",
                self.server_cpu
            ),
        )?;
        let mut engine_cmd = Command::new(&self.verdict_bin);
        engine_cmd.arg("serve").arg("--shards").arg(&topo);
        let engine = start(engine_cmd, "verdict serve")?;
        let engine_target = Target {
            addr: engine.addr,
            pool: pool.clone(),
        };
        let (engine_unpiped, engine_piped) = closed_pair("engine", &engine_target)?;

        let engine_max = engine_piped
            .achieved_rps()
            .max(engine_unpiped.achieved_rps());
        let echo_max = echo_piped.achieved_rps().max(echo_unpiped.achieved_rps());
        let mut sweep = Vec::new();
        for f in &s.fractions {
            let rate = engine_max * f;
            let name = format!("engine-open-{:02}pct", (f * 100.0).round() as u32);
            let o = measure(&name, &engine_target, s.conns_open, 16, Some(rate), s.step)?;
            sweep.push((rate, o));
        }
        let mut client = verdict_net::Client::connect(engine.addr)?;
        let stats = client.stats()?;
        drop(engine);

        // The reference at the engine's 50% rate, for the open-loop p99 ratio.
        let echo = start(self.echo_command(), "verdict-echo")?;
        let echo_target = Target {
            addr: echo.addr,
            pool,
        };
        let half = engine_max * 0.5;
        let echo_half = measure(
            "echo-open-50pct",
            &echo_target,
            s.conns_open,
            16,
            Some(half),
            s.step,
        )?;
        drop(echo);

        let engine_half = sweep
            .iter()
            .find(|(r, _)| (r / engine_max - 0.5).abs() < 1e-6)
            .map(|(_, o)| o.clone());
        self.write_summary(&SummaryInputs {
            echo_unpiped: &echo_unpiped,
            echo_piped: &echo_piped,
            engine_unpiped: &engine_unpiped,
            engine_piped: &engine_piped,
            echo_max,
            engine_max,
            sweep: &sweep,
            echo_half: &echo_half,
            engine_half: engine_half.as_ref(),
            stats: &stats,
            settings: &s,
        })?;
        crate::sweep::plot(
            &self.out.join("latency.png"),
            &sweep,
            engine_half.as_ref(),
            &echo_half,
        )
        .unwrap_or_else(|e| eprintln!("plot skipped: {e:#}"));
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

struct SummaryInputs<'a> {
    echo_unpiped: &'a Outcome,
    echo_piped: &'a Outcome,
    engine_unpiped: &'a Outcome,
    engine_piped: &'a Outcome,
    echo_max: f64,
    engine_max: f64,
    sweep: &'a [(f64, Outcome)],
    echo_half: &'a Outcome,
    engine_half: Option<&'a Outcome>,
    stats: &'a verdict_net::StatsReply,
    settings: &'a Settings,
}

fn environment(server_cpu: usize, client_cpu: usize, epoch: u64) -> Vec<(String, String)> {
    let default_epoch = default_epoch();
    let sha = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let uring = match verdict_engine::uring::probe() {
        Ok(r) => r.summary(),
        Err(e) => e.to_string(),
    };
    vec![
        ("git sha".into(), sha),
        ("kernel".into(), kernel),
        ("cpu".into(), verdict_engine::hardware::cpu_model()),
        (
            "cpus online".into(),
            std::thread::available_parallelism()
                .map_or(0, |n| n.get())
                .to_string(),
        ),
        ("io_uring".into(), uring),
        (
            "pinning".into(),
            format!(
                "server (echo, then engine with 1 shard) on cpu {server_cpu}; generator on cpu {client_cpu}"
            ),
        ),
        ("rule epoch".into(), format!("{epoch}; {}", default_epoch.0)),
        ("models".into(), default_epoch.1),
    ]
}

/// What `verdict serve` with no `--rules` / `--models` decides with (the copies built into
/// the same build of the engine): the rule set and the model hashes, for the header.
fn default_epoch() -> (String, String) {
    let loaded = (|| -> anyhow::Result<(String, String)> {
        let runtime = verdict_models::Runtime::new(verdict_models::RuntimeConfig::default())?;
        let models = runtime
            .load_examples()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let options = verdict_rules::Options {
            models: verdict_engine::scoring::model_inputs(&models),
            ..Default::default()
        };
        let rules = verdict_rules::load_default(&options).map_err(|r| anyhow::anyhow!("{r}"))?;
        let rules_text = format!(
            "the shipped rules/default.rules (built in): {} rules, {} velocity functions, digest {}",
            rules.rule_count(),
            rules.program().velocity.len(),
            rules.digest
        );
        let called = rules.models().join(", ");
        let published = verdict_engine::scoring::Published::new(rules, std::sync::Arc::new(models));
        let models_text = format!(
            "{} (built in; the rules call {called})",
            published.describe_models().join(", ")
        );
        Ok((rules_text, models_text))
    })();
    loaded.unwrap_or_else(|e| (format!("unknown ({e})"), "unknown".into()))
}

impl Sweep {
    fn write_summary(&self, i: &SummaryInputs) -> anyhow::Result<()> {
        let s = i.settings;
        let env = environment(self.server_cpu, self.client_cpu, i.stats.total.epoch);
        let ratio_unpiped =
            i.engine_unpiped.achieved_rps() / i.echo_unpiped.achieved_rps().max(1e-9);
        let ratio_piped = i.engine_piped.achieved_rps() / i.echo_piped.achieved_rps().max(1e-9);
        let p99_ratio = i
            .engine_half
            .map(|e| report::latency_us(e).p99 / report::latency_us(i.echo_half).p99.max(1e-9));

        let mut md = String::from("# verdict latency baseline\n\n");
        for (k, v) in &env {
            md.push_str(&format!("- **{k}**: {v}\n"));
        }
        md.push_str(&format!(
            "- **settings**: warm-up {:?} excluded from every run; closed loop {:?} per run ({} connections x depth 1, {} x depth {}); open loop {:?} per rate, {} connections; {}\n\n",
            s.warmup, s.closed, s.conns_unpipelined, s.conns_pipelined, s.depth_pipelined, s.step, s.conns_open,
            if self.quick { "--quick" } else { "full" }
        ));
        md.push_str("## Closed loop: engine against the reference ceiling\n\n| server | unpipelined rps | pipelined rps | unpipelined p99 us | pipelined p99 us |\n|---|---:|---:|---:|---:|\n");
        for (name, u, p) in [
            ("reference echo", i.echo_unpiped, i.echo_piped),
            ("engine", i.engine_unpiped, i.engine_piped),
        ] {
            md.push_str(&format!(
                "| {name} | {:.0} | {:.0} | {:.1} | {:.1} |\n",
                u.achieved_rps(),
                p.achieved_rps(),
                report::latency_us(u).p99,
                report::latency_us(p).p99
            ));
        }
        md.push_str(&format!(
            "\nengine / reference throughput: **{:.2}** unpipelined, **{:.2}** pipelined (target >= 0.90)\n\n",
            ratio_unpiped, ratio_piped
        ));
        md.push_str(&format!(
            "## Open loop: engine at fractions of its maximum ({:.0} rps)\n\n",
            i.engine_max
        ));
        md.push_str(report::TABLE_HEADER);
        for (rate, o) in i.sweep {
            md.push_str(&report::table_row(o, Some(*rate)));
        }
        md.push_str("\nReference echo at the engine's 50% rate:\n\n");
        md.push_str(report::TABLE_HEADER);
        md.push_str(&report::table_row(i.echo_half, Some(i.engine_max * 0.5)));
        if let Some(r) = p99_ratio {
            md.push_str(&format!(
                "\nopen-loop p99 at 50%: engine / reference = **{r:.2}** (target <= 2.0)\n"
            ));
        }
        md.push_str("\n## Engine per-core stats after the sweep (`verdict stats`)\n\n```\n");
        md.push_str(&verdict_engine::cli::stats::table(i.stats));
        md.push_str("```\n\n![latency](latency.png)\n\n");
        md.push_str(
            "On a 2-core machine the server gets one core and the generator the other: these are \
             one-core numbers, and the generator itself can be the bottleneck (compare the \
             reference row: it does no work at all). Latencies are client-side, from the intended \
             send time in open loop.\n",
        );
        std::fs::write(self.out.join("summary.md"), &md)?;

        let summary = json!({
            "environment": env.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "quick": self.quick,
            "echo_max_rps": i.echo_max,
            "engine_max_rps": i.engine_max,
            "closed_loop": {
                "echo_unpipelined": report::to_json(i.echo_unpiped, None),
                "echo_pipelined": report::to_json(i.echo_piped, None),
                "engine_unpipelined": report::to_json(i.engine_unpiped, None),
                "engine_pipelined": report::to_json(i.engine_piped, None),
                "ratio_unpipelined": ratio_unpiped,
                "ratio_pipelined": ratio_piped,
            },
            "rates": i.sweep.iter().map(|(rate, o)| {
                let l = report::latency_us(o);
                json!({
                    "offered_rps": rate, "achieved_rps": o.achieved_rps(),
                    "p50_us": l.p50, "p90_us": l.p90, "p99_us": l.p99, "p999_us": l.p999, "max_us": l.max,
                    "errors": o.errors, "timeouts": o.timeouts, "lost": o.lost,
                })
            }).collect::<Vec<_>>(),
            "echo_open_50pct": report::to_json(i.echo_half, Some(i.engine_max * 0.5)),
            "open_loop_p99_ratio_at_50pct": p99_ratio,
        });
        std::fs::write(
            self.out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        Ok(())
    }
}

/// A font for the plot: DejaVu Sans from Debian's fonts-dejavu-core.
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Left: p50/p99/p999 against achieved throughput. Right: the percentile spectrum of the
/// engine and the reference at 50% of the engine's maximum.
pub fn plot(
    path: &Path,
    sweep: &[(f64, Outcome)],
    engine_half: Option<&Outcome>,
    echo_half: &Outcome,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = FONT_PATHS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("font could not be loaded"))?;
    if sweep.is_empty() {
        bail!("nothing to plot");
    }
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);

    let x_max = sweep
        .iter()
        .map(|(_, o)| o.achieved_rps())
        .fold(1.0, f64::max)
        * 1.05;
    let series: [(&str, f64, RGBColor); 3] = [
        ("p50", 0.5, BLUE),
        ("p99", 0.99, RED),
        ("p99.9", 0.999, MAGENTA),
    ];
    let y_of = |o: &Outcome, q: f64| (o.latency_ns.value_at_quantile(q) as f64 / 1000.0).max(0.1);
    let y_max = sweep
        .iter()
        .map(|(_, o)| y_of(o, 0.999))
        .fold(1.0, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "engine latency vs throughput (open loop)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (0.1..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("achieved requests/s")
        .y_desc("latency (us)")
        .draw()?;
    for (name, q, color) in series {
        let pts: Vec<(f64, f64)> = sweep
            .iter()
            .map(|(_, o)| (o.achieved_rps(), y_of(o, q)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Percentile spectrum: x = 1/(1-q) on a log axis.
    let spectrum = |o: &Outcome| -> Vec<(f64, f64)> {
        o.latency_ns
            .iter_quantiles(5)
            .map(|v| {
                (
                    1.0 / (1.0 - v.quantile_iterated_to()).max(1e-6),
                    v.value_iterated_to() as f64 / 1000.0,
                )
            })
            .filter(|(x, y)| *x <= 1e5 && *y > 0.0)
            .collect()
    };
    type Line<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);
    let mut lines: Vec<Line> = vec![("reference echo", spectrum(echo_half), BLACK)];
    if let Some(e) = engine_half {
        lines.push(("engine", spectrum(e), RED));
    }
    let y2 = lines
        .iter()
        .flat_map(|(_, l, _)| l.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "percentile spectrum at 50% of engine max",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..1e5).log_scale(), (0.1..y2).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile (1/(1-q): 10 = p90, 100 = p99, 1000 = p99.9)")
        .y_desc("latency (us)")
        .draw()?;
    for (name, pts, color) in lines {
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
