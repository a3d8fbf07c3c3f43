//! Admin HTTP on its own port, served by its own threads, never by a data core:
//! - `GET /metrics`: Prometheus text exposition (per-core labels `shard`, `cpu`);
//! - `GET /stats`: JSON, the shape `verdict stats --json` prints, from the shards' latest
//!   snapshots (at most `runtime.stats_interval_ms` old; each shard's age is included);
//! - `GET /healthz`: 200 while every shard keeps reporting, else 503 naming the silent ones;
//! - `GET /readyz`: 200 once every shard listens, 503 while starting or draining.
//!
//! Every request reads the metrics plane under its mutex (the control thread and these
//! threads are its only users), renders, and answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use log::warn;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::metrics::Plane;

/// Threads answering admin requests (a slow reader holds one of them, never a data core).
const ADMIN_THREADS: usize = 2;
/// How often an idle admin thread checks for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

pub struct Admin {
    pub port: u16,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Admin {
    /// Binds `addr` and starts the admin threads.
    pub fn start(addr: SocketAddr, plane: Arc<Mutex<Plane>>) -> anyhow::Result<Admin> {
        let server = Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("binding the admin port {addr} (listen.admin_port)"))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .context("admin listener has no port")?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..ADMIN_THREADS)
            .map(|i| {
                let (server, plane, stop) = (server.clone(), plane.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("verdict-admin-{i}"))
                    .spawn(move || serve(&server, &plane, &stop))
                    .context("starting an admin thread")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Admin {
            port,
            threads,
            stop,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn serve(server: &Server, plane: &Mutex<Plane>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match server.recv_timeout(SHUTDOWN_POLL) {
            Ok(Some(request)) => answer(request, plane),
            Ok(None) => {}
            Err(e) => {
                warn!("admin: {e}");
                std::thread::sleep(SHUTDOWN_POLL);
            }
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

/// The body and content type of `path`, with its status.
pub fn render(path: &str, plane: &Mutex<Plane>) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let plane = match plane.lock() {
        Ok(p) => p,
        Err(poisoned) => poisoned.into_inner(),
    };
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            plane.prometheus(&plane.kernel()),
        ),
        "/stats" => {
            let (reply, ages) = plane.latest_reply(&plane.kernel());
            let mut json = crate::cli::stats::to_json(&reply);
            json["snapshot_age_ms"] = ages
                .iter()
                .map(|(shard, ms)| serde_json::json!({ "shard": shard, "age_ms": ms }))
                .collect();
            let body = serde_json::to_string_pretty(&json).unwrap_or_default();
            (200, "application/json", body)
        }
        "/healthz" => match plane.health() {
            Ok(()) => (200, TEXT, "ok\n".into()),
            Err(why) => (503, TEXT, format!("unhealthy: {why}\n")),
        },
        "/readyz" => match plane.readiness() {
            Ok(()) => (200, TEXT, "ready\n".into()),
            Err(why) => (503, TEXT, format!("not ready: {why}\n")),
        },
        _ => (
            404,
            TEXT,
            "not found; endpoints: /metrics /stats /healthz /readyz\n".into(),
        ),
    }
}

fn answer(request: Request, plane: &Mutex<Plane>) {
    let (status, kind, body) = match request.method() {
        Method::Get | Method::Head => {
            let path = request.url().split('?').next().unwrap_or("");
            render(path, plane)
        }
        _ => (
            405,
            "text/plain; charset=utf-8",
            "method not allowed: GET only\n".to_string(),
        ),
    };
    let response = Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", kind));
    // A client that went away is its own problem.
    let _ = request.respond(response);
}
