//! The load generator: one pinned monoio runtime (io_uring) per client thread, each with its
//! own connections and its own HdrHistogram; histograms are merged at the end (percentiles
//! are never averaged).
//!
//! - Closed loop: every connection keeps `depth` requests in flight; latency counts from
//!   the moment a request was written.
//! - Open loop (wrk2-style): each connection sends on a fixed schedule; a request's latency
//!   counts from its *intended* send time, so when the server (or the client) stalls, the
//!   requests that should have gone out meanwhile carry the stall. No coordinated omission.
//!
//! Requests come from pools of pre-encoded frames; the sender only patches the id. Only
//! headers of responses are parsed (error frames are decoded for their code).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use verdict_net::frame::{HEADER_LEN, KIND_ERROR, Scan, scan};

use crate::tls::TlsClient;

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// evaluate frames from the event pool.
    Evaluate,
    /// verdict ping frames.
    Ping,
    /// Redis `PING` in RESP (for a redis-server peer).
    RedisPing,
}

/// One connection's target: an address and the frame pool to draw from.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub pool: Arc<Vec<Vec<u8>>>,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Connection i uses `targets[i % targets.len()]`.
    pub targets: Vec<Target>,
    /// One client thread per entry, pinned to that CPU (`None`: unpinned).
    pub cpus: Vec<Option<usize>>,
    pub connections_per_thread: usize,
    /// Closed loop: requests in flight per connection. Open loop: the cap on in-flight
    /// requests per connection before the sender waits (latency still counts from the
    /// intended time).
    pub depth: usize,
    /// Open loop at this total rate (requests/s); `None` = closed loop.
    pub rate_rps: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// A connection with requests in flight that hears nothing for this long gives up; its
    /// unanswered requests count as timeouts.
    pub timeout: Duration,
    pub workload: Workload,
    /// Speak TLS with this client configuration (`None`: plaintext).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Stamp each evaluate frame with the wall clock (ms) as it is sent, so event time
    /// moves on as in live traffic (pool events otherwise repeat their own times).
    pub stamp_now: bool,
}

/// What a run measured (warm-up excluded).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latency in ns of every request answered inside the measurement window.
    pub latency_ns: Histogram<u64>,
    /// Requests whose intended/sent time fell in the window.
    pub sent: u64,
    /// Of those, answered (error frames included).
    pub completed: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<u16, u64>,
    pub timeouts: u64,
    /// Requests in flight on a connection that died (closed or reset by the server, or a
    /// failed write): sent, never answered.
    pub lost: u64,
    /// Connections that could not be opened or broke.
    pub connection_failures: u64,
    pub window: Duration,
}

impl Outcome {
    pub fn achieved_rps(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64().max(1e-9)
    }

    #[doc(hidden)]
    pub fn test_empty() -> Outcome {
        Outcome::empty(Duration::from_secs(1))
    }

    fn empty(window: Duration) -> Outcome {
        Outcome {
            latency_ns: new_histogram(),
            sent: 0,
            completed: 0,
            errors: 0,
            errors_by_code: BTreeMap::new(),
            timeouts: 0,
            lost: 0,
            connection_failures: 0,
            window,
        }
    }

    fn merge(&mut self, other: &Outcome) {
        self.latency_ns.add(&other.latency_ns).expect("same bounds");
        self.sent += other.sent;
        self.completed += other.completed;
        self.errors += other.errors;
        for (code, n) in &other.errors_by_code {
            *self.errors_by_code.entry(*code).or_default() += n;
        }
        self.timeouts += other.timeouts;
        self.lost += other.lost;
        self.connection_failures += other.connection_failures;
    }
}

/// 1 ns .. 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

const REDIS_PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// Reads go into buffers this big, bytes.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Runs the plan; blocks until every client thread is done.
pub fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!plan.targets.is_empty(), "no targets");
    anyhow::ensure!(
        !plan.cpus.is_empty() && plan.connections_per_thread > 0,
        "no connections"
    );
    let start = Instant::now() + Duration::from_millis(50);
    let threads = plan.cpus.len();
    let mut handles = Vec::with_capacity(threads);
    for (t, cpu) in plan.cpus.iter().enumerate() {
        let plan = plan.clone();
        let cpu = *cpu;
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        let _ = monoio::utils::bind_to_cpu_set([cpu]);
                    }
                    crate::run_monoio(thread_main(plan, t, start)).expect("monoio runtime")
                })?,
        );
    }
    let mut total = Outcome::empty(plan.duration);
    for h in handles {
        let o = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        total.merge(&o);
    }
    Ok(total)
}

async fn thread_main(plan: Plan, thread: usize, start: Instant) -> Outcome {
    let shared = Rc::new(RefCell::new(Outcome::empty(plan.duration)));
    let n = plan.connections_per_thread;
    let per_conn_rate = plan.rate_rps.map(|r| r / (plan.cpus.len() * n) as f64);
    let mut tasks = Vec::with_capacity(n);
    for c in 0..n {
        let index = thread * n + c;
        let target = plan.targets[index % plan.targets.len()].clone();
        let conn = Conn {
            plan: plan.clone(),
            target,
            start,
            seed: index as u64,
            outcome: shared.clone(),
        };
        tasks.push(monoio::spawn(async move {
            let result = match per_conn_rate {
                None => conn.closed_loop().await,
                Some(rate) => conn.open_loop(rate).await,
            };
            if result.is_err() {
                conn.outcome.borrow_mut().connection_failures += 1;
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(shared)
        .map(|c| c.into_inner())
        .unwrap_or_else(|rc| rc.borrow().clone())
}

/// Sleeps until an absolute time with microsecond precision: a `timerfd` armed on
/// CLOCK_MONOTONIC (hrtimer) and read through the runtime's io_uring, so waiting for the
/// next send neither spins nor suffers the 1 ms granularity of monoio's timer wheel.
struct Pacer {
    file: monoio::fs::File,
    fd: std::os::fd::RawFd,
    /// CLOCK_MONOTONIC at the run's start, ns.
    base_mono_ns: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Pacer {
    fn new(start: Instant) -> std::io::Result<Pacer> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // Instant is CLOCK_MONOTONIC on Linux; map `start` onto it.
        let now_mono = monotonic_ns();
        let now = Instant::now();
        let base_mono_ns = if start >= now {
            now_mono + (start - now).as_nanos() as u64
        } else {
            now_mono - (now - start).as_nanos() as u64
        };
        // SAFETY: plain syscall; the fd is owned by the File below.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let std_file = unsafe { std::fs::File::from_raw_fd(fd) };
        let raw = std_file.as_raw_fd();
        Ok(Pacer {
            file: monoio::fs::File::from_std(std_file)?,
            fd: raw,
            base_mono_ns,
        })
    }

    /// Waits until `ns` after the run's start (returns at once if that has passed).
    async fn sleep_until(&self, ns: u64) -> std::io::Result<()> {
        let at = self.base_mono_ns + ns;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at / 1_000_000_000) as i64,
                tv_nsec: (at % 1_000_000_000) as i64,
            },
        };
        // SAFETY: valid fd and struct; an absolute time in the past fires immediately.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd,
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (res, _) = self.file.read_at(vec![0u8; 8], 0).await;
        res.map(|_| ())
    }
}

struct Conn {
    plan: Plan,
    target: Target,
    start: Instant,
    seed: u64,
    outcome: Rc<RefCell<Outcome>>,
}

/// Response frames found in the receive buffer.
struct Responses {
    buf: Vec<u8>,
    /// Bytes of `buf` consumed.
    head: usize,
}

impl Responses {
    /// Pops the next whole response: `Some(error code or 0)`.
    fn next(&mut self, workload: Workload) -> Option<u16> {
        let rest = &self.buf[self.head..];
        if workload == Workload::RedisPing {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let code = if rest.first() == Some(&b'-') { 1 } else { 0 };
            self.head += end + 2;
            return Some(code);
        }
        match scan(rest, u32::MAX) {
            Scan::Frame(at) => {
                let code = if at.header.kind == KIND_ERROR {
                    let payload = &rest[HEADER_LEN..HEADER_LEN + at.header.len as usize];
                    error_code(payload)
                } else {
                    0
                };
                self.head += at.frame_len;
                Some(code)
            }
            // A broken stream: treat as one error and drop the rest.
            Scan::Broken { .. } => {
                self.head = self.buf.len();
                Some(u16::MAX)
            }
            Scan::Incomplete { .. } => None,
        }
    }

    fn compact(&mut self) {
        self.buf.drain(..self.head);
        self.head = 0;
    }
}

fn error_code(payload: &[u8]) -> u16 {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<verdict_net::ErrorReply, rkyv::rancor::Error>(&aligned)
        .map(|e| e.code)
        .unwrap_or(u16::MAX)
}

impl Conn {
    fn ns_since_start(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_nanos() as u64
    }

    fn window(&self) -> (u64, u64) {
        let from = self.plan.warmup.as_nanos() as u64;
        (from, from + self.plan.duration.as_nanos() as u64)
    }

    /// Appends request number `k` to `out`.
    fn push_request(&self, out: &mut Vec<u8>, k: u64) {
        match self.plan.workload {
            Workload::RedisPing => out.extend_from_slice(REDIS_PING),
            Workload::Ping => {
                out.extend_from_slice(&verdict_net::frame::encode_header(0x01, 0, k + 1));
            }
            Workload::Evaluate => {
                let pool = &self.target.pool;
                let frame =
                    &pool[((self.seed.wrapping_mul(7919) + k) % pool.len() as u64) as usize];
                let at = out.len();
                out.extend_from_slice(frame);
                out[at + 8..at + 16].copy_from_slice(&(k + 1).to_le_bytes());
                if self.plan.stamp_now
                    && let Some(ts) = crate::events::timestamp_at(frame)
                {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    out[at + ts..at + ts + 8].copy_from_slice(&now.to_le_bytes());
                }
            }
        }
    }

    /// Records one answered request sent (or intended) at `sent_ns`.
    fn record(&self, sent_ns: u64, code: u16, now_ns: u64) {
        let (from, to) = self.window();
        if sent_ns < from || sent_ns >= to {
            return;
        }
        let mut o = self.outcome.borrow_mut();
        o.completed += 1;
        if code != 0 {
            o.errors += 1;
            *o.errors_by_code.entry(code).or_default() += 1;
        }
        o.latency_ns
            .saturating_record(now_ns.saturating_sub(sent_ns).max(1));
    }

    fn count_sent(&self, sent_ns: u64) {
        let (from, to) = self.window();
        if (from..to).contains(&sent_ns) {
            self.outcome.borrow_mut().sent += 1;
        }
    }

    /// Requests of the window still in `pending`.
    fn in_window(&self, pending: &VecDeque<u64>) -> u64 {
        let (from, to) = self.window();
        pending.iter().filter(|t| (from..to).contains(t)).count() as u64
    }

    fn count_timeouts(&self, pending: &VecDeque<u64>) {
        let n = self.in_window(pending);
        self.outcome.borrow_mut().timeouts += n;
    }

    /// The connection died with these in flight: they are lost.
    fn count_lost(&self, pending: &VecDeque<u64>) {
        let n = self.in_window(pending);
        self.outcome.borrow_mut().lost += n;
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect_addr(self.target.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// The TLS handshake when the plan speaks TLS.
    async fn handshake(&self, stream: &mut TcpStream) -> std::io::Result<Option<Rc<TlsClient>>> {
        match &self.plan.tls {
            Some(config) => {
                let addr = self.target.addr.to_string();
                Ok(Some(
                    TlsClient::connect(stream, config.clone(), &addr).await?,
                ))
            }
            None => Ok(None),
        }
    }

    /// Reads more response bytes into `resp` (plain or through TLS): `None` when nothing
    /// came within the plan's timeout.
    async fn read<R: AsyncReadRent>(
        &self,
        r: &mut R,
        tls: Option<&TlsClient>,
        resp: &mut Responses,
    ) -> Option<std::io::Result<usize>> {
        match tls {
            Some(t) => monoio::time::timeout(self.plan.timeout, t.read(r, &mut resp.buf))
                .await
                .ok(),
            None => {
                let len = resp.buf.len();
                let buf = std::mem::take(&mut resp.buf);
                match monoio::time::timeout(self.plan.timeout, r.read(buf.slice_mut(len..))).await {
                    Ok((res, slice)) => {
                        resp.buf = slice.into_inner();
                        Some(res)
                    }
                    Err(_) => {
                        resp.buf = Vec::with_capacity(READ_BUFFER_BYTES);
                        None
                    }
                }
            }
        }
    }

    async fn closed_loop(&self) -> std::io::Result<()> {
        let mut stream = self.connect().await?;
        let tls = self.handshake(&mut stream).await?;
        let (_, end) = self.window();
        let depth = self.plan.depth.max(1);
        let mut pending: VecDeque<u64> = VecDeque::with_capacity(depth);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut resp = Responses {
            buf: Vec::with_capacity(READ_BUFFER_BYTES),
            head: 0,
        };
        let mut k = 0u64;
        loop {
            let now = self.ns_since_start();
            while pending.len() < depth && now < end {
                self.push_request(&mut out, k);
                k += 1;
                pending.push_back(now);
                self.count_sent(now);
            }
            if !out.is_empty() {
                let res = match &tls {
                    Some(t) => t.write(&mut stream, &out).await,
                    None => {
                        let (res, buf) = stream.write_all(out).await;
                        out = buf;
                        res.map(|_| ())
                    }
                };
                if let Err(e) = res {
                    self.count_lost(&pending);
                    return Err(e);
                }
                out.clear();
            }
            if pending.is_empty() {
                return Ok(());
            }
            resp.compact();
            let res = match self.read(&mut stream, tls.as_deref(), &mut resp).await {
                Some(res) => res,
                None => {
                    self.count_timeouts(&pending);
                    return Ok(());
                }
            };
            match res {
                Ok(0) => {
                    self.count_lost(&pending);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Err(e) => {
                    self.count_lost(&pending);
                    return Err(e);
                }
                Ok(_) => {}
            }
            let now = self.ns_since_start();
            while let Some(code) = resp.next(self.plan.workload) {
                let Some(sent) = pending.pop_front() else {
                    break;
                };
                self.record(sent, code, now);
            }
        }
    }

    async fn open_loop(&self, rate_per_conn: f64) -> std::io::Result<()> {
        let mut stream = self.connect().await?;
        let tls = self.handshake(&mut stream).await?;
        let (mut rd, mut wr) = stream.into_split();
        let (_, end) = self.window();
        let interval_ns = (1e9 / rate_per_conn.max(1e-3)) as u64;
        // Stagger connections so they do not all fire at the same instant.
        let offset_ns = (self.seed * 7_919) % interval_ns.max(1);
        let pending: Rc<RefCell<VecDeque<u64>>> = Rc::new(RefCell::new(VecDeque::new()));
        let writer_done = Rc::new(std::cell::Cell::new(false));
        let cap = self.plan.depth.max(1) * 64;
        let pacer = Pacer::new(self.start)?;

        // The writer borrows the write half: dropping it shuts the socket's sending side,
        // which must wait until the reader has every answer (a server may stop answering
        // a half-closed connection, and a TLS server sees a close without close_notify).
        let wr = &mut wr;
        let writer = {
            let pending = pending.clone();
            let writer_done = writer_done.clone();
            let tls = tls.clone();
            async move {
                let mut out = Vec::with_capacity(64 * 1024);
                let mut k = 0u64;
                loop {
                    let intended = offset_ns + k * interval_ns;
                    if intended >= end {
                        break;
                    }
                    let now = self.ns_since_start();
                    if now < intended {
                        if pacer.sleep_until(intended).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    // Send everything that is due (catching up after any stall).
                    let full = {
                        let mut p = pending.borrow_mut();
                        let mut t = intended;
                        while t <= now && t < end && p.len() < cap {
                            self.push_request(&mut out, k);
                            p.push_back(t);
                            self.count_sent(t);
                            k += 1;
                            t = offset_ns + k * interval_ns;
                        }
                        p.len() >= cap
                    };
                    if !out.is_empty() {
                        let res = match &tls {
                            Some(t) => t.write(wr, &out).await,
                            None => {
                                let (res, buf) = wr.write_all(out).await;
                                out = buf;
                                res.map(|_| ())
                            }
                        };
                        out.clear();
                        if res.is_err() {
                            break;
                        }
                    }
                    if full {
                        // The server is not keeping up; wait, the clock keeps running.
                        monoio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                writer_done.set(true);
            }
        };
        let reader = async {
            let mut resp = Responses {
                buf: Vec::with_capacity(READ_BUFFER_BYTES),
                head: 0,
            };
            loop {
                if writer_done.get() && pending.borrow().is_empty() {
                    return Ok(());
                }
                resp.compact();
                let res = match self.read(&mut rd, tls.as_deref(), &mut resp).await {
                    Some(res) => res,
                    None => {
                        if pending.borrow().is_empty() && !writer_done.get() {
                            // Idle between sends at a very low rate: keep waiting.
                            continue;
                        }
                        self.count_timeouts(&pending.borrow());
                        pending.borrow_mut().clear();
                        return Ok(());
                    }
                };
                // A dead connection's in-flight requests are counted once both halves are
                // done (the writer may still add some).
                match res {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
                let now = self.ns_since_start();
                let mut p = pending.borrow_mut();
                while let Some(code) = resp.next(self.plan.workload) {
                    let Some(intended) = p.pop_front() else { break };
                    self.record(intended, code, now);
                }
            }
        };
        let (_, read_result) = futures_lite::future::zip(writer, reader).await;
        if read_result.is_err() {
            self.count_lost(&pending.borrow());
        }
        read_result
    }
}
