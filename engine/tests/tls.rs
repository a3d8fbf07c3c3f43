//! End-to-end TLS: certificates made by `openssl`, spoken to by verdict's own CLI and by
//! Python's `ssl` module (a TLS stack nobody here wrote): ping and evaluate over TLS on the
//! data ports, HTTPS on the admin port, mutual TLS refusing a client without a certificate,
//! a plaintext client closed cleanly, and a renewed certificate served after a reload.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, TOKEN, tempdir, text, topology, verdict};
use verdict_net::Kind;
use verdict_net::frame::encode_frame;

/// A CA and the certificates it signed, made with openssl in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA with a server certificate for 127.0.0.1 and a client certificate, in `dir/name`
    /// (made by openssl: `verdict_net::tls::make_test_pki`).
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        verdict_net::tls::make_test_pki(&dir);
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// A TLS topology whose server certificate and key live at fixed paths in `dir` (copied
/// from `pki`), with the test token, and `extra` lines in `[tls]`.
fn tls_server(dir: &Path, pki: &Pki, extra: &str) -> Server {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server.key"), &key).unwrap();
    let token = common::token_file(dir);
    let toml = format!(
        "{}\n[admin]\ntoken_file = {:?}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n{extra}",
        topology(&[0, 1], ""),
        token.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    Server::with_rules(
        &toml,
        &[("rules/a.rules", "rule a { when amount > 0  score 1 }\n")],
    )
}

/// A fresh directory, PKI and TLS server (`extra`: more `[tls]` lines), and the CA's path.
fn setup(tag: &str, extra: impl Fn(&Pki) -> String) -> (tempdir::Dir, Pki, Server, String) {
    let dir = tempdir::Dir::new(tag);
    let pki = Pki::new(&dir.0, "pki");
    let server = tls_server(&dir.0, &pki, &extra(&pki));
    let ca = pki.path("ca.pem");
    (dir, pki, server, ca)
}

/// Python's ssl client: connects to `port` trusting `ca` (with a client certificate when
/// `client` names one), sends the bytes of `request_file` (if any; else a ping frame), and
/// prints the status of each step and the response bytes in hex.
fn python_tls(
    port: u16,
    ca: &str,
    client: Option<(&str, &str)>,
    request_file: Option<&Path>,
) -> String {
    let script = r#"
import socket, ssl, sys
port, ca, cert, key, request = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)
raw = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
try:
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
except (ssl.SSLError, OSError) as e:
    print("handshake-failed", type(e).__name__); sys.exit(0)
data = open(request, "rb").read() if request else bytes([0x56, 0x44, 1, 1, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0])
try:
    s.sendall(data)
    got = b""
    while len(got) < 16:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    if len(got) >= 16:
        need = 16 + ((int.from_bytes(got[4:8], "little") + 15) // 16) * 16
        while len(got) < need:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    print("ok" if got else "closed", s.version(), got.hex())
except (ssl.SSLError, OSError) as e:
    print("refused", type(e).__name__)
"#;
    let (cert, key) = client.unwrap_or(("", ""));
    let request = request_file
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), ca, cert, key, &request])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn the_cli_pings_evaluates_and_reads_stats_over_tls_and_https() {
    let (dir, _pki, server, ca) = setup("tls-cli", |_| String::new());
    let out = verdict(&[
        "ping",
        "--addr",
        &server.addr(),
        "--tls-ca",
        &ca,
        "--count",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let event = verdict_net::json::event_to_json(&common::event(1)).to_string();
    let mut send = Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(["send", "--addr", &server.shard_addr(1), "--tls-ca", &ca])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(send.stdin.take().unwrap(), "{event}").unwrap();
    let out = send.wait_with_output().unwrap();
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["rules"][0], "a", "{decision}");
    let out = verdict(&["stats", "--addr", &server.addr(), "--tls-ca", &ca, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["total"]["events"].as_u64().unwrap() >= 1);
    // The admin port speaks HTTPS: Python's urllib with the CA, and the CLI's reload.
    let script = "import ssl,sys,urllib.request as u\n\
                  ctx=ssl.create_default_context(cafile=sys.argv[2])\n\
                  r=u.urlopen('https://127.0.0.1:'+sys.argv[1]+'/healthz',context=ctx,timeout=20)\n\
                  print(r.status, r.read().decode().strip())";
    let out = Command::new("python3")
        .args(["-c", script, &server.admin_port.to_string(), &ca])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "200 ok", "{}", text(&out.stderr));
    let admin = format!("127.0.0.1:{}", server.admin_port);
    let token = dir.0.join("admin.token");
    let out = verdict(&[
        "reload",
        "--admin",
        &admin,
        "--tls-ca",
        &ca,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stdout).starts_with("epoch 2 published"),
        "{}",
        text(&out.stderr)
    );
    // Plaintext to the TLS admin port gets no HTTP answer.
    let (status, _) = std::panic::catch_unwind(|| common::http_get(server.admin_port, "/healthz"))
        .unwrap_or((0, String::new()));
    assert_ne!(status, 200);
}

#[test]
fn python_ssl_pings_and_evaluates_on_the_data_port() {
    let (dir, _pki, server, ca) = setup("tls-py", |_| String::new());
    let answer = python_tls(server.port, &ca, None, None);
    let mut words = answer.split_whitespace();
    assert_eq!(words.next(), Some("ok"), "{answer}");
    assert!(words.next().unwrap().starts_with("TLSv1."), "{answer}");
    // 0x81 (ping's answer) with id 7, empty payload.
    assert_eq!(
        words.next(),
        Some("56440181000000000700000000000000"),
        "{answer}"
    );
    let frame = encode_frame(Kind::Evaluate.request_byte(), 42, &common::event(9)).unwrap();
    let request = dir.0.join("evaluate.bin");
    std::fs::write(&request, &frame[..]).unwrap();
    let answer = python_tls(server.shard_ports[0], &ca, None, Some(&request));
    let hex = answer
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("{answer}"));
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(bytes[3], Kind::Evaluate.response_byte(), "{answer}");
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 42);
    let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let mut payload = rkyv::util::AlignedVec::<16>::new();
    payload.extend_from_slice(&bytes[16..16 + len]);
    let decision: verdict_net::Decision =
        rkyv::from_bytes::<_, rkyv::rancor::Error>(&payload).unwrap();
    assert_eq!(
        (decision.event_id.as_str(), decision.rules.clone()),
        ("evt-9", vec!["a".to_string()])
    );
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let (_dir, pki, server, ca) = setup("tls-mtls", |pki| {
        format!("client_ca_file = {:?}\n", pki.path("ca.pem"))
    });
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    // Python without a client certificate: the handshake or the first exchange fails.
    let answer = python_tls(server.port, &ca, None, None);
    assert!(
        answer.starts_with("handshake-failed")
            || answer.starts_with("refused")
            || answer.starts_with("closed"),
        "{answer}"
    );
    // With one it is served, by Python and by the CLI.
    let answer = python_tls(server.port, &ca, Some((&cert, &key)), None);
    assert!(answer.starts_with("ok "), "{answer}");
    let out = verdict(&["ping", "--addr", &server.addr(), "--tls-ca", &ca]);
    assert!(!out.status.success(), "no client certificate, no answer");
    let out = verdict(&[
        "ping",
        "--addr",
        &server.addr(),
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_plaintext_client_on_a_tls_port_is_closed_cleanly() {
    let (_dir, _pki, server, ca) = setup("tls-plain", |_| String::new());
    let mut raw = std::net::TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    use std::io::Write;
    raw.write_all(&common::raw_frame(Kind::Ping.request_byte(), 1, &[]))
        .unwrap();
    // At most a TLS alert record (content type 21), then the close; never a frame.
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(got.is_empty() || got[0] == 21, "{got:?}");
    // The shard serves on.
    let out = verdict(&["ping", "--addr", &server.addr(), "--tls-ca", &ca]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = verdict(&["stats", "--addr", &server.addr(), "--tls-ca", &ca, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stats["total"]["tls_handshakes_failed"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

#[test]
fn a_reload_serves_a_renewed_certificate_without_a_restart() {
    let dir = tempdir::Dir::new("tls-renew");
    let (old, new) = (Pki::new(&dir.0, "old"), Pki::new(&dir.0, "new"));
    let server = tls_server(&dir.0, &old, "");
    let (old_ca, new_ca) = (old.path("ca.pem"), new.path("ca.pem"));
    let ping = |ca: &str| {
        verdict(&["ping", "--addr", &server.addr(), "--tls-ca", ca])
            .status
            .success()
    };
    assert!(ping(&old_ca) && !ping(&new_ca));
    // Renew in place (another CA, so the difference shows), then reload.
    std::fs::copy(new.path("server.pem"), dir.0.join("server.pem")).unwrap();
    std::fs::copy(new.path("server.key"), dir.0.join("server.key")).unwrap();
    let auth = format!("Bearer {TOKEN}");
    let script = "import ssl,sys,urllib.request as u\n\
                  ctx=ssl.create_default_context(cafile=sys.argv[2])\n\
                  req=u.Request('https://127.0.0.1:'+sys.argv[1]+'/v1/reload',data=b'',method='POST',headers={'Authorization':sys.argv[3]})\n\
                  r=u.urlopen(req,context=ctx,timeout=60)\n\
                  print(r.status)";
    let out = Command::new("python3")
        .args(["-c", script, &server.admin_port.to_string(), &old_ca, &auth])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "200", "{}", text(&out.stderr));
    // Every shard takes the new epoch within a tick of its publication; wait for it, boundedly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ping(&new_ca) {
        assert!(
            std::time::Instant::now() < deadline,
            "new connections never got the renewed certificate"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!ping(&old_ca));
}

/// The HTTP/JSON port under `[tls]` is HTTPS: Python's `http.client` over `ssl` (trusting
/// the test CA) decides an event and reads the topology on one kept-alive connection; a
/// plaintext HTTP request on it gets no answer.
#[test]
fn the_http_port_speaks_https() {
    let dir = tempdir::Dir::new("tls-http");
    let pki = Pki::new(&dir.0, "pki");
    let toml = format!(
        "{}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        topology(&[0, 1], ""),
        pki.path("server.pem"),
        pki.path("server.key"),
    );
    let server = Server::launch_http(&toml, &[], &[]);
    let event = verdict_net::json::event_to_json(&common::event(7)).to_string();
    let script = r#"
import http.client, json, socket, ssl, sys
port, ca, event = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
c.request("POST", "/v1/decide", body=event, headers={"Content-Type": "application/json"})
r = c.getresponse()
d = json.loads(r.read())
c.request("GET", "/v1/topology")
t = json.loads(c.getresponse().read())
print(r.status, d["event_id"], t["shard_count"], c.sock.version())
raw = socket.create_connection(("127.0.0.1", port), timeout=20)
raw.sendall(b"GET /v1/topology HTTP/1.1\r\nHost: x\r\n\r\n")
got = b""
try:
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError:
    pass
print("plaintext-answered" if got.startswith(b"HTTP/") else "plaintext-refused")
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &server.http_port.to_string(),
            &pki.path("ca.pem"),
            &event,
        ])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python: {}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("200 evt-7 2 TLSv1."), "{lines:?}");
    assert_eq!(lines[1], "plaintext-refused");
}
