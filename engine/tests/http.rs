//! The HTTP/JSON port end to end: `verdict serve` with `listen.http_port`, spoken to with
//! curl and with raw sockets. Every endpoint, every error status with its code and message,
//! the limits, keep-alive, pipelining, `Expect: 100-continue`, slow and stalled clients,
//! clients that do not speak HTTP, and the same events through HTTP and the binary port
//! giving the same decisions.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, text, topology};
use serde_json::{Value, json};
use verdict_net::json::{DECISION_FIELDS, decision_to_json, event_to_json};
use verdict_net::{Event, Kind};

/// A two-shard engine's forwards on a loaded CI machine must not time out into 504s.
const PATIENT_MESH: &str = "mesh_reply_timeout_ms = 10000\n";

/// One HTTP response as read off the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Checks this is an error with `status` and `code` (and the code's name); its message.
    fn error(&self, status: u16, code: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        let name = verdict_net::ErrorCode::from_u16(code).unwrap().name();
        assert_eq!(v["name"], name, "{v}");
        let message = v["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty());
        message
    }
}

/// A raw HTTP/1.1 connection: writes bytes, reads whole responses.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(port: u16) -> Http {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Reply {
        self.send(&request(method, path, &[], body));
        self.read().expect("a response, not a close")
    }

    /// The next response; `None` if the server closed the connection first.
    fn read(&mut self) -> Option<Reply> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap();
                assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
                let status = status_line[9..12].parse().unwrap();
                let headers: Vec<(String, String)> = lines
                    .map(|l| {
                        let (n, v) = l.split_once(':').unwrap();
                        (n.to_string(), v.trim().to_string())
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= end + 4 + len {
                    let body =
                        String::from_utf8(self.buf[end + 4..end + 4 + len].to_vec()).unwrap();
                    self.buf.drain(..end + 4 + len);
                    return Some(Reply {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty(),
                        "closed mid-response: {:?}",
                        text(&self.buf)
                    );
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next response to a HEAD request: its head, no body whatever its Content-Length.
    fn read_head(&mut self) -> Reply {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                // A body-less copy the usual parser reads.
                let text = String::from_utf8(head).unwrap();
                let stripped: String = text
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("content-length"))
                    .collect::<Vec<_>>()
                    .join("\r\n");
                let mut parse = Http {
                    stream: self.stream.try_clone().unwrap(),
                    buf: stripped.into_bytes(),
                };
                let mut reply = parse.read().unwrap();
                let len = text.split("\r\n").find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                });
                reply
                    .headers
                    .push(("Content-Length".into(), len.unwrap_or_default()));
                return reply;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before a head");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Expects the server to close the connection with nothing more to say.
    fn expect_closed(&mut self) {
        if let Some(r) = self.read() {
            panic!("expected a close, got {r:?}");
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request's bytes, with a Content-Length when it has a body.
fn request(method: &str, path: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

fn event_json(e: &Event) -> String {
    event_to_json(e).to_string()
}

/// A decision's JSON without `server_ns` (the only field that differs between two runs).
fn comparable(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("server_ns");
    v
}

/// `curl -s` with `args`; (status, content type, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .args(args)
        .output()
        .expect("curl runs (scripts/setup.sh installs it)");
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    let all = text(&out.stdout);
    let (body, last) = all.rsplit_once('\n').unwrap();
    let (status, content_type) = last.split_once(' ').unwrap();
    (
        status.parse().unwrap(),
        content_type.to_string(),
        body.to_string(),
    )
}

#[test]
fn curl_reaches_every_endpoint() {
    let server = Server::launch_http(&topology(&[0, 1], PATIENT_MESH), &[], &[]);
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", server.http_port);
    let events: Vec<Event> = (0..30).map(common::event).collect();

    let (status, content_type, body) =
        curl(&["--json", &event_json(&events[0]), &url("/v1/decide")]);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{body}"
    );
    let d: Value = serde_json::from_str(&body).unwrap();
    for field in DECISION_FIELDS {
        assert!(d.get(field).is_some(), "{field} missing in {d}");
    }
    assert_eq!(d["event_id"], "evt-0");

    // Plain `-d` (form content type): the body is JSON all the same.
    let (status, _, body) = curl(&["-d", &event_json(&events[1]), &url("/v1/decide")]);
    assert_eq!(status, 200, "{body}");

    // 30 events are over curl's 1 KiB threshold: it sends `Expect: 100-continue` first.
    let array = format!(
        "[{}]",
        events.iter().map(event_json).collect::<Vec<_>>().join(",")
    );
    assert!(array.len() > 1024);
    let (status, content_type, body) = curl(&["--json", &array, &url("/v1/decide/batch")]);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{body}"
    );
    let decisions: Vec<Value> = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = decisions
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, want);

    let lines: String = events[..3].iter().map(|e| event_json(e) + "\n").collect();
    let (status, content_type, body) = curl(&[
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        &lines,
        &url("/v1/decide/batch"),
    ]);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-ndjson"),
        "{body}"
    );
    let ids: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["evt-0", "evt-1", "evt-2"]);

    let (status, _, body) = curl(&[&url("/v1/topology")]);
    assert_eq!(status, 200);
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["shard_count"], 2);
    assert_eq!(t["port"], server.port);
    assert_eq!(t["shard_ports"], json!(server.shard_ports));
    assert_eq!(t["routing"], "fnv1a64-partitions");
    let partitions = t["partitions"].as_u64().unwrap() as usize;
    assert_eq!(t["partition_shards"].as_array().unwrap().len(), partitions);

    let (status, _, body) = curl(&[&url("/v1/nothing")]);
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = curl(&["-X", "DELETE", &url("/v1/decide")]);
    assert_eq!(status, 405, "{body}");
}

#[test]
fn every_error_has_its_status_code_and_message() {
    let limits = "batch_events_max = 4\nframe_len_max_bytes = 2048\n\
                  http_body_bytes_max = 8192\nhttp_header_bytes_max = 1024\n";
    let server = Server::launch_http(&topology(&[0], limits), &[], &[]);
    let port = server.http_port;
    let good = event_json(&common::event(1));
    let mut c = Http::connect(port);

    let m = c.request("GET", "/v2/decide", "").error(404, 4);
    assert!(m.contains("POST /v1/decide"), "{m}");
    let r = c.request("GET", "/v1/decide", "");
    r.error(405, 4);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = c.request("POST", "/v1/topology", "{}");
    r.error(405, 4);
    assert_eq!(r.header("allow"), Some("GET"));

    // Not JSON, cut short, not UTF-8: 400 (invalid_payload).
    c.request("POST", "/v1/decide", "{\"event_id\": ")
        .error(400, 5);
    c.request("POST", "/v1/decide", "hello").error(400, 5);
    c.send(b"POST /v1/decide HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe");
    let m = c.read().unwrap().error(400, 5);
    assert!(m.contains("UTF-8"), "{m}");
    c.request("POST", "/v1/decide/batch", "[{},").error(400, 5);

    // JSON that is not a valid event: 422 (bad_field), naming the field.
    let unknown = good.replacen('{', "{\"color\":\"red\",", 1);
    let m = c.request("POST", "/v1/decide", &unknown).error(422, 6);
    assert!(m.contains("color"), "{m}");
    let missing = good.replace("\"currency\":\"USD\",", "");
    assert!(
        c.request("POST", "/v1/decide", &missing)
            .error(422, 6)
            .contains("currency")
    );
    let m = c.request("POST", "/v1/decide", "[1]").error(422, 6);
    assert!(!m.is_empty());
    // Valid JSON, a field out of range: refused by the same check as the binary port.
    let mut long = common::event(2);
    long.event_id = "x".repeat(300);
    let m = c
        .request("POST", "/v1/decide", &event_json(&long))
        .error(422, 6);
    assert!(m.contains("event_id"), "{m}");
    let m = c
        .request(
            "POST",
            "/v1/decide/batch",
            &format!("[{good},{}]", event_json(&long)),
        )
        .error(422, 6);
    assert!(m.starts_with("event 1: "), "{m}");
    let m = c
        .request("POST", "/v1/decide/batch", &format!("{good}\n{}", unknown))
        .error(422, 6);
    assert!(m.starts_with("line 2: "), "{m}");

    // Batch sizes: none, or over limits.batch_events_max.
    let m = c.request("POST", "/v1/decide/batch", "[]").error(413, 7);
    assert!(m.contains("limits.batch_events_max"), "{m}");
    let five = format!("[{}]", [good.as_str(); 5].join(","));
    c.request("POST", "/v1/decide/batch", &five).error(413, 7);

    // Events that fit the body limit but not the frame limit once encoded.
    let mut wide = common::event(3);
    for i in 0..40 {
        wide.attributes.push(verdict_net::Attribute {
            name: format!("attribute_{i}"),
            value: verdict_net::AttrValue::Str("v".repeat(100)),
        });
    }
    let m = c
        .request("POST", "/v1/decide", &event_json(&wide))
        .error(413, 3);
    assert!(m.contains("limits.frame_len_max_bytes"), "{m}");

    // After all of that the connection still decides.
    let r = c.request("POST", "/v1/decide", &good);
    assert_eq!(r.status, 200, "{r:?}");

    // Errors that break HTTP framing are answered, then the connection closes.
    let closes: [(&[u8], u16, u16, &str); 5] = [
        (
            b"POST /v1/decide HTTP/1.1\r\nContent-Length: 9000\r\n\r\n",
            413,
            3,
            "limits.http_body_bytes_max",
        ),
        (
            b"POST /v1/decide HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
            5,
            "Content-Length",
        ),
        (b"GET /v1/topology HTTP/1.1\r\nX-A: \x01\r\n\r\n", 400, 5, "malformed"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, 2, "HTTP/1"),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, 5, "Content-Length"),
    ];
    for (bytes, status, code, says) in closes {
        let mut c = Http::connect(port);
        c.send(bytes);
        let r = c.read().unwrap();
        let m = r.error(status, code);
        assert!(m.contains(says), "{m}");
        assert_eq!(r.header("connection"), Some("close"));
        c.expect_closed();
    }
    let mut c = Http::connect(port);
    let big_header = format!(
        "GET /v1/topology HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(2000)
    );
    c.send(big_header.as_bytes());
    let m = c.read().unwrap().error(431, 3);
    assert!(m.contains("limits.http_header_bytes_max"), "{m}");
    c.expect_closed();
}

#[test]
fn connections_over_the_limit_get_503_with_retry_after() {
    let server = Server::launch_http(&topology(&[0], "connections_per_shard_max = 1\n"), &[], &[]);
    let mut held = Http::connect(server.http_port);
    assert_eq!(held.request("GET", "/v1/topology", "").status, 200);
    let mut refused = Http::connect(server.http_port);
    let r = refused.read().expect("told why before the close");
    let m = r.error(503, 8);
    assert!(m.contains("limits.connections_per_shard_max"), "{m}");
    assert_eq!(r.header("retry-after"), Some("1"));
    refused.expect_closed();
    // The held connection is unaffected.
    assert_eq!(held.request("GET", "/v1/topology", "").status, 200);
}

/// A round whose answers would not fit the shard's connection memory is refused (503, code
/// 8, undecided) and the connection goes on.
#[test]
fn answers_that_would_not_fit_the_memory_budget_are_refused() {
    let limits = "connection_memory_bytes_max = 1048576\nbatch_events_max = 4096\n";
    let server = Server::launch_http(&topology(&[0], limits), &[], &[]);
    let mut c = Http::connect(server.http_port);
    let events: Vec<String> = (0..1500)
        .map(|i| {
            let mut e = common::event(i);
            e.attributes.push(verdict_net::Attribute {
                name: "note".into(),
                value: verdict_net::AttrValue::Str("n".repeat(200)),
            });
            event_json(&e)
        })
        .collect();
    let body = format!("[{}]", events.join(","));
    assert!(
        body.len() < 1048576 - 64 * 1024,
        "the request itself fits: {}",
        body.len()
    );
    let r = c.request("POST", "/v1/decide/batch", &body);
    let m = r.error(503, 8);
    assert!(m.contains("answers"), "{m}");
    assert_eq!(r.header("retry-after"), Some("1"));
    let ok = c.request("POST", "/v1/decide", &events[0]);
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[test]
fn keep_alive_pipelining_and_continue() {
    let server = Server::launch_http(&topology(&[0, 1], PATIENT_MESH), &[], &[]);
    let port = server.http_port;
    let mut c = Http::connect(port);
    // 200 requests in one write, decides and others mixed: answered in order.
    let mut bytes = Vec::new();
    for i in 0..200u64 {
        if i % 50 == 49 {
            bytes.extend(request("GET", "/v1/topology", &[], ""));
        } else if i % 50 == 25 {
            bytes.extend(request("POST", "/v1/decide", &[], "{oops"));
        } else {
            bytes.extend(request(
                "POST",
                "/v1/decide",
                &[],
                &event_json(&common::event(i)),
            ));
        }
    }
    c.send(&bytes);
    for i in 0..200u64 {
        let r = c.read().unwrap();
        if i % 50 == 49 {
            assert_eq!(r.json()["shard_count"], 2);
        } else if i % 50 == 25 {
            r.error(400, 5);
        } else {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.json()["event_id"], format!("evt-{i}"));
            assert_eq!(
                r.header("connection"),
                None,
                "keep-alive is HTTP/1.1's default"
            );
        }
    }

    // A request cut into pieces arriving over time is answered once whole.
    let bytes = request("POST", "/v1/decide", &[], &event_json(&common::event(500)));
    for piece in bytes.chunks(40) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.read().unwrap().json()["event_id"], "evt-500");

    // Expect: 100-continue: the server asks for the body, then answers.
    let body = event_json(&common::event(501));
    c.send(
        format!(
            "POST /v1/decide HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let interim = c.read().unwrap();
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send(body.as_bytes());
    assert_eq!(c.read().unwrap().json()["event_id"], "evt-501");

    // HEAD: the head alone, so the connection stays in step.
    c.send(&request("HEAD", "/v1/topology", &[], ""));
    c.send(&request("HEAD", "/v1/decide", &[], ""));
    c.send(&request("GET", "/v1/topology", &[], ""));
    for status in [200, 405] {
        let head = c.read_head();
        assert_eq!(head.status, status, "{head:?}");
        assert!(
            head.header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
                > 0
        );
    }
    assert_eq!(c.read().unwrap().json()["shard_count"], 2);

    // `Connection: close`: answered, then closed; requests after it are not read.
    let mut close = request("GET", "/v1/topology", &["Connection: close"], "");
    close.extend(request("GET", "/v1/topology", &[], ""));
    c.send(&close);
    let r = c.read().unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    c.expect_closed();

    // HTTP/1.0 closes after each answer unless it asks to keep the connection.
    let mut old = Http::connect(port);
    old.send(b"GET /v1/topology HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = old.read().unwrap();
    assert_eq!(
        (r.status, r.header("connection")),
        (200, Some("keep-alive"))
    );
    old.send(b"GET /v1/topology HTTP/1.0\r\n\r\n");
    let r = old.read().unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    old.expect_closed();
}

#[test]
fn stalled_requests_and_non_http_clients_are_closed() {
    let server = Server::launch_http(&topology(&[0], "frame_timeout_ms = 300\n"), &[], &[]);
    let port = server.http_port;

    // Half a request, then nothing: closed unanswered once frame_timeout_ms has passed.
    let mut stalled = Http::connect(port);
    let started = Instant::now();
    stalled.send(b"POST /v1/decide HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"event_id\"");
    stalled.expect_closed();
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A binary frame (a ping) on the HTTP port: 400, then the close.
    let mut binary = Http::connect(port);
    binary.send(&common::raw_frame(Kind::Ping.request_byte(), 1, &[]));
    binary.read().unwrap().error(400, 5);
    binary.expect_closed();

    // A TLS ClientHello's first bytes on the plaintext HTTP port.
    let mut tls = Http::connect(port);
    tls.send(&[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ]);
    tls.read().unwrap().error(400, 5);
    tls.expect_closed();

    // Garbage bytes, then a disconnect mid-request: the shard goes on serving.
    let mut gone = TcpStream::connect(("127.0.0.1", port)).unwrap();
    gone.write_all(b"POST /v1/decide HTTP/1.1\r\nContent-Le")
        .unwrap();
    drop(gone);
    let mut c = Http::connect(port);
    let r = c.request("POST", "/v1/decide", &event_json(&common::event(1)));
    assert_eq!(r.status, 200, "{r:?}");
}

/// Two engines with the same rules and models: one hears the events on the binary port, the
/// other over HTTP. Every decision must be the same (but for `server_ns`).
#[test]
fn http_and_the_binary_port_decide_the_same() {
    let models = common::tempdir::Dir::new("http-models");
    let models_dir = common::patient_models(&models.0);
    let args = ["--models", models_dir.to_str().unwrap()];
    let files = [("rules/main.rules", common::RULES)];
    let events = common::velocity_stream(240);

    // Two shards, one event at a time: events of accounts the other shard owns are
    // forwarded to it on both paths.
    let binary = Server::launch_with(&[], &topology(&[0, 1], PATIENT_MESH), &files, &args);
    let http = Server::launch_http(&topology(&[0, 1], PATIENT_MESH), &files, &args);
    let mut client = common::client(&binary.addr());
    let mut c = Http::connect(http.http_port);
    let mut shards = std::collections::BTreeSet::new();
    for e in &events[..160] {
        let want = decision_to_json(&client.evaluate(e).unwrap());
        let got = c.request("POST", "/v1/decide", &event_json(e));
        assert_eq!(got.status, 200, "{got:?}");
        shards.insert(want["shard"].as_u64().unwrap());
        assert_eq!(
            comparable(got.json()),
            comparable(want),
            "event {}",
            e.event_id
        );
    }
    assert_eq!(shards.len(), 2, "both shards decided some");

    // Batches: an evaluate-batch frame against an HTTP array and NDJSON.
    for (k, chunk) in events[160..].chunks(40).enumerate() {
        let want: Vec<Value> = client
            .evaluate_batch(chunk.to_vec())
            .unwrap()
            .iter()
            .map(|d| comparable(decision_to_json(d)))
            .collect();
        let got: Vec<Value> = if k % 2 == 0 {
            let body = format!(
                "[{}]",
                chunk.iter().map(event_json).collect::<Vec<_>>().join(",")
            );
            let r = c.request("POST", "/v1/decide/batch", &body);
            assert_eq!(r.status, 200, "{r:?}");
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .map(comparable)
                .collect()
        } else {
            let body: String = chunk.iter().map(|e| event_json(e) + "\n").collect();
            let r = c.request("POST", "/v1/decide/batch", &body);
            assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
            r.body
                .lines()
                .map(|l| comparable(serde_json::from_str(l).unwrap()))
                .collect()
        };
        assert_eq!(got, want, "batch {k}");
    }
}
