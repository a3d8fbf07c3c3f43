//! The generator against the reference echo server on loopback: closed and open loop each
//! answer every request, and the open loop holds its offered rate.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use verdict_bench::events::{EventGen, encode_events};
use verdict_bench::load::{self, Plan, Target, Workload};

struct Echo(std::process::Child, SocketAddr);

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo() -> Echo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_verdict-echo"))
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().rsplit('=').next().unwrap().parse().unwrap();
    Echo(child, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn plan(addr: SocketAddr, depth: usize, rate: Option<f64>, workload: Workload) -> Plan {
    let mut g = EventGen::new(5);
    let events: Vec<_> = (0..64).map(|_| g.next_event()).collect();
    Plan {
        targets: vec![Target {
            addr,
            pool: Arc::new(encode_events(&events)),
        }],
        cpus: vec![None],
        connections_per_thread: 4,
        depth,
        rate_rps: rate,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(800),
        timeout: Duration::from_secs(5),
        workload,
        tls: None,
        stamp_now: false,
    }
}

#[test]
fn closed_loop_answers_every_request_it_counts() {
    let server = echo();
    for (depth, workload) in [
        (1, Workload::Evaluate),
        (8, Workload::Evaluate),
        (4, Workload::Ping),
    ] {
        let o = load::run(&plan(server.1, depth, None, workload)).unwrap();
        assert!(
            o.completed > 100,
            "{workload:?} depth {depth}: {} completed",
            o.completed
        );
        assert_eq!((o.errors, o.timeouts, o.connection_failures), (0, 0, 0));
        assert_eq!(o.latency_ns.len(), o.completed);
    }
}

#[test]
fn open_loop_holds_the_offered_rate() {
    let server = echo();
    let o = load::run(&plan(server.1, 16, Some(2_000.0), Workload::Evaluate)).unwrap();
    // 2,000 rps for 0.8 s: 1,600 intended sends, every one answered.
    assert!((1_500..=1_700).contains(&o.sent), "sent {}", o.sent);
    assert_eq!(o.completed, o.sent);
    assert_eq!((o.errors, o.timeouts), (0, 0));
}

#[test]
fn a_dead_server_is_counted_not_hidden() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let o = load::run(&plan(dead, 1, None, Workload::Ping)).unwrap();
    assert_eq!(o.connection_failures, 4);
    assert_eq!(o.completed, 0);
}

#[test]
fn requests_in_flight_on_a_connection_that_dies_are_counted_lost() {
    // A server that reads everything, answers nothing, and hangs up 600 ms in (inside the
    // measurement window, 200..1000 ms), on every connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                use std::io::Read;
                let until = std::time::Instant::now() + Duration::from_millis(600);
                let mut buf = [0u8; 4096];
                while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                    let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    if matches!(stream.read(&mut buf), Ok(0)) {
                        break;
                    }
                }
            });
        }
    });
    // Open loop: requests go out during the window whether or not answers come.
    let o = load::run(&plan(addr, 4, Some(1_000.0), Workload::Evaluate)).unwrap();
    assert_eq!(o.completed, 0);
    assert!(
        o.lost > 0,
        "in-flight requests of a dead connection are lost: sent {}",
        o.sent
    );
    assert_eq!(o.timeouts, 0, "a dead connection is not a timeout");
    assert_eq!(
        o.lost, o.sent,
        "every request sent in the window was in flight at the close"
    );
}

#[test]
fn the_generator_speaks_tls_to_a_python_ssl_server() {
    // Python's ssl (a TLS stack nobody here wrote) answers every request frame with an empty
    // response frame of the same id, closed loop and open loop.
    let dir = std::env::temp_dir().join(format!("verdict-load-tls-{}", std::process::id()));
    verdict_net::tls::make_test_pki(&dir);
    let script = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
def serve(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
        buf = b""
        while True:
            data = s.recv(65536)
            if not data:
                return
            buf += data
            out = b""
            while len(buf) >= 16:
                size = 16 + ((int.from_bytes(buf[4:8], "little") + 15) // 16) * 16
                if len(buf) < size:
                    break
                out += buf[0:3] + bytes([buf[3] | 0x80]) + bytes(4) + buf[8:16]
                buf = buf[size:]
            if out:
                s.sendall(out)
    except (ssl.SSLError, OSError):
        return
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the port");
    let server = Echo(child, SocketAddr::from(([127, 0, 0, 1], port)));
    let tls = verdict_net::tls::ClientTls {
        ca_file: dir.join("ca.pem"),
        ..Default::default()
    }
    .config()
    .unwrap();
    for rate in [None, Some(1_000.0)] {
        let mut p = plan(server.1, 8, rate, Workload::Evaluate);
        p.tls = Some(tls.clone());
        let o = load::run(&p).unwrap();
        assert!(o.completed > 100, "{rate:?}: {} completed", o.completed);
        assert_eq!(
            (o.errors, o.timeouts, o.lost, o.connection_failures),
            (0, 0, 0, 0)
        );
        assert_eq!(o.completed, o.sent, "{rate:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
