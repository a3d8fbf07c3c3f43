//! Test harness: starts the real `verdict serve` binary on 127.0.0.1 with free ports, reads
//! the ports from its ready line, and kills it when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use verdict_net::frame::{HEADER_LEN, Scan, scan};
use verdict_net::{Client, ErrorCode, ErrorReply, Event};

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub shard_ports: Vec<u16>,
    /// The admin HTTP port.
    pub admin_port: u16,
    /// The HTTP/JSON port (`listen.http_port`; 0: off).
    pub http_port: u16,
    pub dir: tempdir::Dir,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Files the server reads that live outside `dir` (removed with the server).
    pub kept: Option<tempdir::Dir>,
}

pub mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "verdict-test-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `verdict ARGS...` to completion, as a user would.
pub fn verdict(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(args)
        .output()
        .unwrap()
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback port free a moment ago (bound, then let go).
/// Every row of the decision log in `dir`, through `verdict log export --format jsonl`.
pub fn log_export(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let file = dir.with_extension("jsonl");
    let out = verdict(&[
        "log",
        "export",
        dir.to_str().unwrap(),
        "--format",
        "jsonl",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A topology for `cpus` on free loopback ports, with extra `[limits]` lines.
pub fn topology(cpus: &[u32], limits: &str) -> String {
    let mut t = String::from("[listen]\naddress = \"127.0.0.1\"\nport = 0\nshard_port_base = 0\n");
    for c in cpus {
        t.push_str(&format!("[[shard]]\ncpu = {c}\n"));
    }
    t.push_str("[limits]\n");
    t.push_str(limits);
    t.push_str("\n[runtime]\nio_memory_bytes = 1048576\n");
    t
}

impl Server {
    /// Two shards (cpus 0 and 1) with default limits.
    pub fn start() -> Server {
        Server::with_topology(&topology(&[0, 1], ""))
    }

    pub fn with_topology(toml: &str) -> Server {
        Server::launch(&[], toml)
    }

    /// Starts `prefix... verdict serve --shards FILE` (e.g. a privilege-dropping wrapper).
    pub fn launch(prefix: &[&str], toml: &str) -> Server {
        Server::launch_with(prefix, toml, &[], &[])
    }

    /// Serves the rule set made of `files` (relative path, text), written to the server's
    /// directory; the first file is passed as `--rules`.
    pub fn with_rules(toml: &str, files: &[(&str, &str)]) -> Server {
        Server::launch_with(&[], toml, files, &[])
    }

    /// The directory the server's files live in (rules written by `with_rules`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// `prefix... verdict serve --shards FILE [--rules FIRST_FILE] ARGS...`.
    pub fn launch_with(
        prefix: &[&str],
        toml: &str,
        files: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        Server::try_launch_with(prefix, toml, files, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Server::launch_with`] with `[listen] http_port` set to a free port: the port is
    /// found by binding port 0 and letting go, so another process may take it first; then
    /// the start is tried again on another (at most 5 times).
    pub fn launch_http(toml: &str, files: &[(&str, &str)], args: &[&str]) -> Server {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let with_http =
                toml.replacen("[listen]\n", &format!("[listen]\nhttp_port = {port}\n"), 1);
            assert_ne!(with_http, toml, "the topology has no [listen] section");
            match Server::try_launch_with(&[], &with_http, files, args) {
                Ok(server) => return server,
                Err(e) if e.contains("listen.http_port") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free HTTP port in 5 tries: {last}");
    }

    pub fn try_launch_with(
        prefix: &[&str],
        toml: &str,
        files: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Server, String> {
        let dir = tempdir::Dir::new("serve");
        let path = dir.0.join("shards.toml");
        std::fs::write(&path, toml).unwrap();
        for (name, text) in files {
            let file = dir.0.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        let bin = env!("CARGO_BIN_EXE_verdict");
        let mut command = match prefix.split_first() {
            None => Command::new(bin),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
        };
        command.args(["serve", "--shards"]).arg(&path);
        if let Some((first, _)) = files.first() {
            command.arg("--rules").arg(dir.0.join(first));
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn verdict serve");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if !line.starts_with("verdict ready:") {
            let _ = child.kill();
            let _ = child.wait();
            // The stderr reader may still be collecting the last words.
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!(
                "no ready line; got {line:?}; stderr: {}",
                stderr.lock().unwrap()
            ));
        }
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing in {line}"))
                .to_string()
        };
        let port = field("port").parse().unwrap();
        let admin_port = field("admin_port").parse().unwrap();
        let http_port = field("http_port").parse().unwrap();
        let shard_ports = field("shard_ports")
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect();
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Ok(Server {
            child,
            port,
            shard_ports,
            admin_port,
            http_port,
            dir,
            stderr,
            kept: None,
        })
    }

    /// [`Server::with_rules`], scoring with [`patient_models`]: for tests that compare
    /// model scores across runs, which a call the scheduler delays past the shipped 2 ms
    /// deadline would turn into a fallback.
    pub fn with_patient_rules(toml: &str, files: &[(&str, &str)]) -> Server {
        let models = tempdir::Dir::new("models");
        let dir = patient_models(&models.0);
        let mut server =
            Server::launch_with(&[], toml, files, &["--models", dir.to_str().unwrap()]);
        server.kept = Some(models);
        server
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn shard_addr(&self, shard: usize) -> String {
        format!("127.0.0.1:{}", self.shard_ports[shard])
    }

    pub fn client(&self) -> Client {
        client(&self.addr())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the server to exit; its exit status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "server did not exit within {within:?}; stderr: {}",
            self.stderr.lock().unwrap()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Streams evaluate requests (`event(i)` for the i-th) on one connection, pipelined `depth`
/// deep, until `stop`; checks every request got exactly one decision, in order, with epochs
/// never going back, and hands each decision to `check`. Returns (answered, last epoch).
pub fn stream(
    addr: &str,
    stop: &std::sync::atomic::AtomicBool,
    depth: usize,
    event: impl Fn(u64) -> Event,
    check: impl Fn(&verdict_net::Decision),
) -> (u64, u64) {
    use std::sync::atomic::Ordering;
    use verdict_net::Kind;
    let mut c = client(addr);
    let (mut sent, mut answered, mut last_epoch) = (0u64, 0u64, 0u64);
    let mut in_flight = std::collections::VecDeque::new();
    loop {
        if !stop.load(Ordering::Relaxed) {
            while in_flight.len() < depth {
                let e = event(sent);
                in_flight.push_back((c.send(Kind::Evaluate, &e).unwrap(), e.event_id));
                sent += 1;
            }
            c.flush().unwrap();
        }
        let Some((id, event_id)) = in_flight.pop_front() else {
            break;
        };
        let d: verdict_net::Decision = c
            .recv()
            .unwrap()
            .expect(Kind::Evaluate, id)
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(d.event_id, event_id);
        assert!(
            d.epoch >= last_epoch,
            "epoch went back: {last_epoch} -> {}",
            d.epoch
        );
        last_epoch = d.epoch;
        check(&d);
        answered += 1;
    }
    assert_eq!(sent, answered);
    (answered, last_epoch)
}

/// A plain HTTP/1.0 request to the admin port: (status, body).
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path)
}

/// A token the tests' engines accept on their control API.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Writes `TOKEN` to `dir/admin.token`, readable by its owner only; returns the path.
pub fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An HTTP request made by Python's `http.client` (a client nobody here wrote):
/// (status, body). `headers` as (name, value).
pub fn http_py(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let script = r#"
import http.client, json, sys
port, method, path, headers, body = sys.argv[1:]
c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
c.request(method, path, body=body.encode() if body else None, headers=json.loads(headers))
r = c.getresponse()
sys.stdout.write(str(r.status) + "\n" + r.read().decode("utf-8", "replace"))
"#;
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), serde_json::Value::from(*v)))
        .collect();
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), method, path])
        .arg(serde_json::Value::Object(headers).to_string())
        .arg(body)
        .output()
        .expect("python3 runs (scripts/setup.sh)");
    assert!(out.status.success(), "python: {}", text(&out.stderr));
    let out = text(&out.stdout);
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    (status.parse().unwrap(), body.to_string())
}

/// Sends every event as a pipelined evaluate, flushes once, and returns the decisions in
/// order (each answer checked to be the decision of its request).
pub fn pipelined(c: &mut Client, events: &[Event]) -> Vec<verdict_net::Decision> {
    let ids: Vec<u64> = events
        .iter()
        .map(|e| c.send(verdict_net::Kind::Evaluate, e).unwrap())
        .collect();
    c.flush().unwrap();
    ids.into_iter()
        .map(|id| {
            c.recv()
                .unwrap()
                .expect(verdict_net::Kind::Evaluate, id)
                .unwrap()
                .decode()
                .unwrap()
        })
        .collect()
}

pub fn client(addr: &str) -> Client {
    let c = Client::connect(addr).unwrap();
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

pub fn event(i: u64) -> Event {
    verdict_net::test_event(
        &format!("evt-{i}"),
        &format!("acct-{}", i % 97),
        1000 + i as i64,
    )
}

/// `event(i)` with its account moved to one the default two-shard partition table gives to
/// `shard` (so the shard decides it whichever port it arrives on).
pub fn event_on(shard: u32, i: u64) -> Event {
    let table =
        verdict_net::routing::PartitionTable::modulo(verdict_net::routing::PARTITIONS_DEFAULT, 2)
            .unwrap();
    let mut e = event(i);
    let mut j = i % 97;
    while table.owner_of_account(&format!("acct-{j}")) != shard {
        j += 97;
    }
    e.account_id = format!("acct-{j}");
    e
}

/// A raw frame: header + payload padded to 16.
pub fn raw_frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = verdict_net::frame::encode_header(kind, payload.len() as u32, id).to_vec();
    f.extend_from_slice(payload);
    f.resize(HEADER_LEN + verdict_net::frame::padded(payload.len()), 0);
    f
}

/// Writes raw bytes on a fresh std stream and reads whole response frames from it.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next response frame: (kind, id, payload copied into an aligned buffer).
    pub fn recv(&mut self) -> Option<(u8, u64, rkyv::util::AlignedVec<16>)> {
        loop {
            if let Scan::Frame(at) = scan(&self.buf, u32::MAX) {
                let p = at.payload_start;
                let mut payload = rkyv::util::AlignedVec::new();
                payload.extend_from_slice(&self.buf[p..p + at.header.len as usize]);
                self.buf.drain(..at.frame_len);
                return Some((at.header.kind, at.header.id, payload));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Expects an error frame for `id` with `code`; returns its message.
    pub fn expect_error(&mut self, id: u64, code: ErrorCode) -> String {
        let (kind, got_id, payload) = self.recv().expect("an error frame, not a close");
        assert_eq!(kind, 0xFF, "expected an error frame");
        assert_eq!(got_id, id);
        let err = rkyv::from_bytes::<ErrorReply, rkyv::rancor::Error>(&payload).unwrap();
        assert_eq!(err.code, code as u16, "message: {}", err.message);
        err.message
    }

    /// Expects the server to close the connection (EOF, no more frames).
    pub fn expect_closed(&mut self) {
        assert!(
            self.recv().is_none(),
            "expected the server to close the connection"
        );
    }
}

/// Velocity over every key, a model, a shadow rule and a policy (the exact-state and
/// replay tests' rule set).
pub const RULES: &str = r#"
fallback model("fraud_lr") = 0
rule device_burst { when count(device, 10m) >= 5  score 50 }
rule ip_spend { when sum(amount, ip, 1h) > 300.00  score 20 }
rule merchant_accounts { when distinct(account, merchant, 1h) >= 3  score 10 }
rule account_burst { when count(account, 60s) >= 3  score 30 }
rule many_devices { when distinct(device, account, 24h) >= 2  score 15 }
rule model_risk { when model("fraud_lr") > 0.5  score 40 }
shadow rule shadow_device { when count(device, 1h) >= 8  action deny }
policy { deny when score >= 80; review when score >= 40; otherwise allow }
"#;

pub const T0: u64 = 1_700_000_000_000;

/// What must be identical however an event travelled, whichever shard or node decided it
/// (not the shard, timing or epoch): id, action, score, rules, shadow rules, model scores.
pub fn essence(
    d: &verdict_net::Decision,
) -> (
    String,
    verdict_net::Action,
    i32,
    Vec<String>,
    Vec<String>,
    String,
) {
    let models = d
        .models
        .iter()
        .map(|m| format!("{}={}/{}", m.name, m.score.to_bits(), m.error))
        .collect::<Vec<_>>()
        .join(",");
    (
        d.event_id.clone(),
        d.action,
        d.score,
        d.rules.clone(),
        d.shadow_rules.clone(),
        models,
    )
}

/// `n` events: many accounts, few devices, IPs and merchants shared across them, time
/// moving forward by 0.5-3.5 s per event (seeded: the same stream every run).
pub fn velocity_stream(n: usize) -> Vec<Event> {
    let mut rng = fastrand::Rng::with_seed(16);
    let mut t = T0;
    (0..n)
        .map(|i| {
            t += rng.u64(500..3_500);
            let mut e = verdict_net::test_event(
                &format!("evt-{i}"),
                &format!("acct-{}", rng.u32(0..150)),
                rng.i64(100..20_000),
            );
            e.timestamp_ms = t;
            e.device_id = format!("dev-{}", rng.u32(0..6));
            e.merchant_id = format!("m-{}", rng.u32(0..4));
            e.ip = std::net::IpAddr::from([198, 51, 100, rng.u8(1..6)]);
            e
        })
        .collect()
}

/// The shipped `fraud_lr` with a deadline of a second, written under `dir`; returns the
/// models directory to pass as `--models`.
pub fn patient_models(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/examples/fraud_lr");
    let models = dir.join("models");
    let model = models.join("fraud_lr");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(shipped.join("fraud_lr.wasm"), model.join("fraud_lr.wasm")).unwrap();
    let manifest = std::fs::read_to_string(shipped.join("manifest.toml")).unwrap();
    assert!(manifest.contains("deadline_us = 2000"), "{manifest}");
    std::fs::write(
        model.join("manifest.toml"),
        manifest.replace("deadline_us = 2000", "deadline_us = 1000000"),
    )
    .unwrap();
    models
}

/// The venv's python (scripts/setup.sh installs the pinned PyPI tools there: pyarrow,
/// xgboost-cpu, lightgbm, numpy).
pub fn venv_python() -> String {
    std::env::var("VERDICT_VENV_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/verdict/venv/bin/python")
    })
}
