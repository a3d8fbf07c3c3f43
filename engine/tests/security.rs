//! End-to-end: who may change the engine, and what a client can make it read or hold.
//! The data port refuses reloads by default; the admin port's control API needs the
//! token; reloads read only regular files under rules.dir and quote nothing outside it; the
//! admin port's threads are fixed however many clients connect. HTTP is spoken by Python's
//! `http.client`, a client nobody here wrote.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, TOKEN, http_py, tempdir, text, topology, verdict};
use verdict_net::{ClientError, ErrorCode};

const RULES_A: &str = "rule a_rule { when amount > 0  score 1 }\n";
const RULES_B: &str = "rule b_rule { when amount > 0  score 2 }\n";
/// A line of a file outside rules.dir: no answer may carry it.
const SECRET: &str = "SECRET-0xC0FFEE-do-not-quote";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A server with the token configured, serving `rules/a.rules` (rules.dir = `rules/`), with
/// `secret.txt` beside that directory. Returns the server and the token's directory.
fn guarded(extra_admin: &str) -> (Server, tempdir::Dir) {
    let secrets = tempdir::Dir::new("token");
    let token = common::token_file(&secrets.0);
    // Requests must arrive within 1.5 s unless the test says otherwise.
    let read_timeout = if extra_admin.contains("read_timeout_ms") {
        ""
    } else {
        "read_timeout_ms = 1500\n"
    };
    let toml = format!(
        "{}\n[admin]\ntoken_file = {:?}\n{read_timeout}{extra_admin}",
        topology(&[0, 1], ""),
        token.display().to_string()
    );
    let server = Server::with_rules(
        &toml,
        &[
            ("rules/a.rules", RULES_A),
            ("rules/b.rules", RULES_B),
            ("secret.txt", &format!("rule x {{ when {SECRET} }}\n")),
        ],
    );
    (server, secrets)
}

fn reload(server: &Server, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(bearer);
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_py(server.admin_port, "POST", "/v1/reload", &headers, body)
}

fn rules_of(server: &Server) -> (u64, Vec<String>) {
    let d = server.client().evaluate(&common::event(1)).unwrap();
    (d.epoch, d.rules)
}

#[test]
fn the_data_port_refuses_reloads_by_default_and_nothing_changes() {
    let (server, _secrets) = guarded("");
    let err = server.client().reload("b.rules").unwrap_err();
    match err {
        ClientError::Server { code, message, .. } => {
            assert_eq!(code, ErrorCode::Forbidden as u16);
            assert!(message.contains("/v1/reload"), "{message}");
        }
        other => panic!("expected error 11, got {other:?}"),
    }
    // The connection goes on, and the rule set is the one served at start.
    assert_eq!(rules_of(&server), (1, vec!["a_rule".to_string()]));
    let out = verdict(&["reload", "--addr", &server.addr(), "--rules", "b.rules"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("forbidden"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_control_api_publishes_only_with_its_token() {
    let (server, secrets) = guarded("");
    let body = r#"{"rules_path": "b.rules"}"#;
    let (status, answer) = reload(&server, None, body);
    assert_eq!(status, 401, "{answer}");
    let (status, _) = reload(&server, Some("test-token-0123456789abcdeX"), body);
    assert_eq!(status, 401);
    let (status, _) = reload(&server, Some("short"), body);
    assert_eq!(status, 401);
    assert_eq!(rules_of(&server), (1, vec!["a_rule".to_string()]));
    let (status, answer) = reload(&server, Some(TOKEN), body);
    assert_eq!(status, 200, "{answer}");
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (json["ok"].as_bool(), json["epoch"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(json["rules_path"], "b.rules");
    assert_eq!(rules_of(&server), (2, vec!["b_rule".to_string()]));
    // The CLI speaks the same API.
    let admin = format!("127.0.0.1:{}", server.admin_port);
    let token = secrets.0.join("admin.token");
    let out = verdict(&[
        "reload",
        "--admin",
        &admin,
        "--token-file",
        token.to_str().unwrap(),
        "--rules",
        "a.rules",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("epoch 3 published"),
        "{}",
        text(&out.stdout)
    );
    // Reads need no token unless token_for_reads.
    assert_eq!(
        http_py(server.admin_port, "GET", "/healthz", &[], "").0,
        200
    );
}

#[test]
fn without_a_token_file_every_mutating_endpoint_answers_403_and_says_how() {
    let server = Server::with_rules(&topology(&[0], ""), &[("a.rules", RULES_A)]);
    let (status, body) = http_py(server.admin_port, "POST", "/v1/reload", &[], "");
    assert_eq!(status, 403);
    assert!(
        body.contains("token_file") && body.contains("chmod 600"),
        "{body}"
    );
    let (status, _) = http_py(
        server.admin_port,
        "POST",
        "/v1/reload",
        &[("Authorization", &bearer(TOKEN))],
        "",
    );
    assert_eq!(status, 403);
    assert_eq!(rules_of(&server).0, 1);
}

#[test]
fn token_for_reads_guards_metrics_stats_and_health() {
    let (server, _secrets) = guarded("token_for_reads = true\n");
    for path in ["/metrics", "/stats", "/healthz", "/readyz"] {
        assert_eq!(
            http_py(server.admin_port, "GET", path, &[], "").0,
            401,
            "{path}"
        );
        let auth = bearer(TOKEN);
        let (status, _) = http_py(
            server.admin_port,
            "GET",
            path,
            &[("Authorization", &auth)],
            "",
        );
        assert_eq!(status, 200, "{path}");
    }
}

#[test]
fn a_token_file_others_can_read_stops_the_engine_from_starting() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir::Dir::new("loose-token");
    let token = common::token_file(&dir.0);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shards = dir.0.join("shards.toml");
    let toml = format!(
        "{}\n[admin]\ntoken_file = {:?}\n",
        topology(&[0], ""),
        token.display().to_string()
    );
    std::fs::write(&shards, toml).unwrap();
    let out = verdict(&["serve", "--shards", shards.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("chmod 600") && !err.contains(TOKEN), "{err}");
}

#[test]
fn reload_paths_stay_inside_rules_dir_and_nothing_outside_is_quoted() {
    let (server, _secrets) = guarded("");
    let rules_dir = server.dir().join("rules");
    let secret = server.dir().join("secret.txt");
    std::os::unix::fs::symlink(&secret, rules_dir.join("evil.rules")).unwrap();
    std::os::unix::fs::symlink(server.dir(), rules_dir.join("up")).unwrap();
    // A rules file inside whose list points out.
    std::fs::write(
        rules_dir.join("lists_out.rules"),
        "list s from \"../secret.txt\"\nrule r { when account in s  score 1 }\n",
    )
    .unwrap();
    let tries = [
        "../secret.txt".to_string(),
        secret.display().to_string(),
        "evil.rules".to_string(),
        "up/secret.txt".to_string(),
        "lists_out.rules".to_string(),
    ];
    for path in tries {
        let body = serde_json::json!({ "rules_path": path }).to_string();
        let (status, answer) = reload(&server, Some(TOKEN), &body);
        assert_eq!(status, 422, "{path}: {answer}");
        assert!(!answer.contains(SECRET), "{path} leaked the file: {answer}");
        assert!(
            answer.contains("refused")
                || answer.contains("leads out")
                || answer.contains("outside"),
            "{path}: {answer}"
        );
    }
    assert_eq!(rules_of(&server), (1, vec!["a_rule".to_string()]));
}

#[test]
fn a_fifo_or_a_device_fails_the_reload_fast_and_health_stays_green() {
    let (server, _secrets) = guarded("");
    let rules_dir = server.dir().join("rules");
    let fifo = std::ffi::CString::new(rules_dir.join("pipe.rules").to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink("/dev/zero", rules_dir.join("zero.rules")).unwrap();
    let zero = std::ffi::CString::new(rules_dir.join("zero_node.rules").to_str().unwrap()).unwrap();
    // SAFETY: a valid path; /dev/zero is character device 1:5 (root may make one).
    let made = unsafe { libc::mknod(zero.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) };
    let mut tries = vec![
        ("pipe.rules", "not a regular file"),
        ("zero.rules", "leads out"),
    ];
    if made == 0 {
        tries.push(("zero_node.rules", "not a regular file"));
    }
    for (path, why) in tries {
        let body = serde_json::json!({ "rules_path": path }).to_string();
        let (status, answer) = reload(&server, Some(TOKEN), &body);
        assert_eq!(status, 422, "{path}: {answer}");
        assert!(answer.contains(why), "{path}: {answer}");
        assert_eq!(
            http_py(server.admin_port, "GET", "/healthz", &[], "").0,
            200
        );
    }
    // The engine still reloads what it may.
    let (status, answer) = reload(&server, Some(TOKEN), r#"{"rules_path": "b.rules"}"#);
    assert_eq!(status, 200, "{answer}");
}

/// Threads of the server process.
fn threads(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .count()
}

#[test]
fn a_thousand_idle_admin_connections_add_no_thread_and_slots_come_back() {
    // Idle connections hold their slots for the whole test (a minute to send a request),
    // however slowly the machine opens a thousand of them.
    let (server, _secrets) =
        guarded("connections_max = 32\nthreads = 2\nread_timeout_ms = 60000\n");
    // A thousand sockets here too: lift this process's soft descriptor limit to the hard one
    // (the soft default is 1024 on many systems).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let before = threads(&server);
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(("127.0.0.1", server.admin_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(threads(&server), before, "no thread per connection");
    // The data path is not the admin port's to slow down.
    assert_eq!(rules_of(&server).0, 1);
    // Over the cap a new client is told to come back, at once.
    let mut extra = TcpStream::connect(("127.0.0.1", server.admin_port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(idle);
    // Once they are gone (or timed out), slots free up and reads answer again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_py(server.admin_port, "GET", "/metrics", &[], "");
        if status == 200 {
            assert!(body.contains("verdict_"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(threads(&server), before);
}

#[test]
fn slow_oversized_and_chunked_admin_requests_get_their_status() {
    let (server, _secrets) = guarded("header_bytes_max = 2048\nbody_bytes_max = 1024\n");
    let raw = |bytes: &[u8]| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", server.admin_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(bytes).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    // A request that never completes is answered 408 at read_timeout_ms (1.5 s here).
    assert!(raw(b"GET /metr").starts_with("HTTP/1.1 408"));
    let long = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(4096)
    );
    assert!(raw(long.as_bytes()).starts_with("HTTP/1.1 431"));
    let big = b"POST /v1/reload HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
    assert!(raw(big).starts_with("HTTP/1.1 413"));
    let chunked = b"POST /v1/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(raw(chunked).starts_with("HTTP/1.1 411"));
    assert!(raw(b"\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert_eq!(
        http_py(server.admin_port, "GET", "/healthz", &[], "").0,
        200
    );
}

/// The capabilities `scripts/verdict.service` grants are enough: as `nobody` with exactly
/// CAP_BPF, CAP_PERFMON and CAP_IPC_LOCK (ambient, as systemd's AmbientCapabilities gives
/// them), the engine serves, locks its io_uring memory and loads every default probe group.
#[test]
fn the_service_units_capabilities_are_enough_for_an_unprivileged_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch to nobody with capabilities");
        return;
    }
    let caps = "-all,+bpf,+perfmon,+ipc_lock";
    let prefix = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
    ];
    let toml = topology(&[0], "") + "\n[models]\ncache_dir = \"off\"\n";
    let server = Server::launch(
        &prefix.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
        &toml,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.contains("65534"), "runs as nobody: {uid}");
    let stats = server.client().stats().unwrap();
    for probe in &stats.probes {
        if probe.group != "syscalls" {
            assert!(probe.active, "{}: {}", probe.group, probe.reason);
        }
    }
    assert_eq!(
        server.client().evaluate(&common::event(1)).unwrap().epoch,
        1
    );
}
