//! The admin port: HTTP on its own threads, never on a data core. Reads (`/metrics`,
//! `/stats`, `/healthz`, `/readyz`) and the control API (`POST /v1/reload`, bearer token);
//! the endpoints are in [`routes`], the token in [`token`], the HTTP in [`crate::http`].
//!
//! Everything a client can make it hold is bounded (`[admin]` in shards.toml): one accept
//! thread and `threads` workers, whatever the number of clients; at most `connections_max`
//! connections being answered or waiting for a worker (one more is answered 503 and closed
//! by the accept thread at once); a request must arrive whole within `read_timeout_ms` and
//! within `header_bytes_max` + `body_bytes_max` bytes; a client that takes none of the
//! answer for `write_timeout_ms` is dropped. One request per connection.
//!
//! (This replaced tiny_http, which starts a thread per connection and never times an idle
//! one out: 1,000 idle connections meant 1,000 threads.)

pub mod routes;
pub mod token;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use log::warn;

use crate::config::AdminConfig;
use crate::http::{self, Bounds, ReadError, Response, ServerStream};
use crate::metrics::Plane;
use crate::reload::Reloads;
use crate::scoring::Published;
use verdict_rules::EpochCell;

pub use routes::Routes;
pub use token::Token;

/// How often the accept thread checks for shutdown while no client connects.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// How long the accept thread spends telling a client over the cap to come back later.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

pub struct Admin {
    pub port: u16,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// What the admin threads share (read-only but for the counters).
struct Shared {
    routes: Routes,
    config: AdminConfig,
    /// Connections accepted and not yet finished (answered or waiting for a worker).
    open: AtomicUsize,
    /// The epoch cell: its TLS configuration is the one new admin connections get.
    epochs: Arc<EpochCell<Published>>,
    stop: Arc<AtomicBool>,
}

impl Admin {
    /// Binds `addr` and starts the accept thread and the workers.
    pub fn start(
        addr: SocketAddr,
        config: &AdminConfig,
        epochs: Arc<EpochCell<Published>>,
        plane: Arc<Mutex<Plane>>,
        reloads: Reloads,
        token: Option<Token>,
        reload_timeout: Duration,
    ) -> anyhow::Result<Admin> {
        let listener = bind(addr)
            .with_context(|| format!("binding the admin port {addr} (listen.admin_port)"))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            routes: Routes {
                plane,
                reloads,
                token,
                token_for_reads: config.token_for_reads,
                reload_timeout,
            },
            config: config.clone(),
            open: AtomicUsize::new(0),
            epochs,
            stop: stop.clone(),
        });
        let (work, queue) = flume::bounded::<TcpStream>(config.connections_max as usize);
        let mut threads = Vec::with_capacity(config.threads as usize + 1);
        for i in 0..config.threads {
            let (shared, queue) = (shared.clone(), queue.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("verdict-admin-{i}"))
                    .spawn(move || work_loop(&shared, &queue))
                    .context("starting an admin thread")?,
            );
        }
        let accepting = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("verdict-admin-accept".into())
                .spawn(move || accept_loop(&listener, &accepting, work))
                .context("starting the admin accept thread")?,
        );
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

/// Connections the kernel queues before the accept thread takes them.
const LISTEN_BACKLOG: i32 = 1024;

/// A non-blocking listener with a backlog deep enough that a burst of clients is accepted
/// (and answered, 503 past the cap) rather than left retrying SYNs (std's backlog is 128).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn accept_loop(listener: &TcpListener, shared: &Shared, work: flume::Sender<TcpStream>) {
    let cap = shared.config.connections_max as usize;
    while !shared.stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(SHUTDOWN_POLL);
                continue;
            }
            Err(e) => {
                // Out of descriptors and the like: say so, back off, go on.
                warn!("admin: accept: {e}");
                std::thread::sleep(SHUTDOWN_POLL);
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        if shared.open.load(Ordering::Relaxed) >= cap {
            refuse(stream, cap);
            continue;
        }
        shared.open.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = work.try_send(stream) {
            // Cannot happen while `open` is under the queue's capacity; answer anyway.
            shared.open.fetch_sub(1, Ordering::Relaxed);
            refuse(e.into_inner(), cap);
        }
    }
    // Dropping `work` here ends the workers once the queue is empty.
}

/// A 503 for a client over `admin.connections_max`, written without waiting on it.
fn refuse(mut stream: TcpStream, cap: usize) {
    let _ = stream.set_write_timeout(Some(REFUSE_WRITE_TIMEOUT));
    let body = format!("busy: {cap} admin connections open (admin.connections_max); retry\n");
    let _ = stream.write_all(
        &Response::text(503, body)
            .with_header("Retry-After", "1")
            .to_bytes(false),
    );
}

fn work_loop(shared: &Shared, queue: &flume::Receiver<TcpStream>) {
    loop {
        match queue.recv_timeout(SHUTDOWN_POLL) {
            Ok(stream) => {
                serve_one(shared, stream);
                shared.open.fetch_sub(1, Ordering::Relaxed);
            }
            Err(flume::RecvTimeoutError::Timeout) if shared.stop.load(Ordering::Relaxed) => {
                return;
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Reads one request within the deadline and bounds, answers it, closes.
fn serve_one(shared: &Shared, stream: TcpStream) {
    let config = &shared.config;
    let _ = stream.set_write_timeout(Some(Duration::from_millis(config.write_timeout_ms)));
    let deadline = Instant::now() + Duration::from_millis(config.read_timeout_ms);
    // TLS as the current epoch has it (re-read on every reload); the handshake counts
    // against the request's deadline.
    let tls = shared.epochs.load().tls.clone();
    let Ok(mut stream) = ServerStream::accept(stream, tls, deadline) else {
        return;
    };
    let bounds = Bounds {
        header_bytes_max: config.header_bytes_max as usize,
        body_bytes_max: config.body_bytes_max as usize,
        keys: http::ADMIN_KEYS,
    };
    let (response, head) = match http::read_request(&mut stream, bounds, deadline) {
        Ok(Some(request)) => (shared.routes.answer(&request), request.method == "HEAD"),
        // Closed before saying anything: nothing is owed.
        Ok(None) | Err(ReadError::TimedOut { started: false }) | Err(ReadError::Io(_)) => {
            return;
        }
        Err(ReadError::TimedOut { started: true }) => (
            Response::text(
                408,
                format!(
                    "the request did not arrive whole within {} ms (admin.read_timeout_ms)\n",
                    config.read_timeout_ms
                ),
            ),
            false,
        ),
        Err(ReadError::Http(e)) => (Response::text(e.status(), format!("{e}\n")), false),
    };
    let _ = stream.write_all(&response.to_bytes(head));
    let _ = stream.flush();
    stream.shutdown_write();
    // Closing with unread input resets the connection, and a reset can destroy the answer
    // before the client reads it (a 413 for a body still arriving): read a little first,
    // within one deadline however the client trickles.
    if let Ok(tcp) = stream.tcp().try_clone() {
        let mut socket = http::Deadlined {
            tcp,
            read_by: Instant::now() + LINGER,
        };
        let _ = std::io::copy(
            &mut (&mut socket).take(LINGER_BYTES_MAX),
            &mut std::io::sink(),
        );
    }
}

/// How long, and how many bytes, a closing connection's leftover input is read and dropped.
const LINGER: Duration = Duration::from_millis(100);
const LINGER_BYTES_MAX: u64 = 64 * 1024;
