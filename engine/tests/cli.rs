//! The `verdict` subcommands as a user runs them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{Server, event, text, topology, verdict};
use verdict_net::json::event_to_json;

#[test]
fn send_prints_one_line_per_input_line_in_order() {
    let server = Server::start();
    let dir = common::tempdir::Dir::new("send");
    let path = dir.0.join("events.jsonl");
    let mut lines: Vec<String> = (0..300)
        .map(|i| event_to_json(&event(i)).to_string())
        .collect();
    lines.insert(10, "{not json".into());
    let mut bad = event(999);
    bad.currency = "dollars".into();
    lines.insert(20, event_to_json(&bad).to_string());
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let out = verdict(&[
        "send",
        "--addr",
        &server.addr(),
        "--file",
        path.to_str().unwrap(),
        "--depth",
        "16",
    ]);
    assert_eq!(out.status.code(), Some(1), "errors make the exit code 1");
    let stdout = text(&out.stdout);
    let got: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 302);
    assert_eq!(got[10]["line"], 11);
    assert_eq!(got[10]["error"]["name"], "bad_json");
    assert_eq!(got[20]["line"], 21);
    assert_eq!(got[20]["error"]["name"], "bad_field");
    assert_eq!(got[20]["error"]["code"], 6);
    let decisions: Vec<&serde_json::Value> =
        got.iter().filter(|v| v.get("action").is_some()).collect();
    assert_eq!(decisions.len(), 300);
    for (i, d) in decisions.iter().enumerate() {
        assert_eq!(d["event_id"], format!("evt-{i}"), "in input order");
        for key in verdict_net::json::DECISION_FIELDS {
            assert!(d.get(key).is_some(), "decision lacks {key}: {d}");
        }
    }
    assert!(
        text(&out.stderr).contains("300 decisions, 2 errors"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn send_answers_each_typed_line_before_the_next_arrives() {
    let server = Server::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_verdict"))
        .args(["send", "--addr", &server.addr()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for i in 0..3 {
        writeln!(stdin, "{}", event_to_json(&event(i))).unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event_id"], format!("evt-{i}"));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn stats_prints_a_row_per_core_and_json() {
    let server = Server::start();
    for shard in 0..2 {
        common::client(&server.shard_addr(shard))
            .evaluate(&event(shard as u64))
            .unwrap();
    }
    let out = verdict(&["stats", "--addr", &server.addr()]);
    assert!(out.status.success());
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].contains("p99 us") && rows[0].contains("requests"),
        "{table}"
    );
    assert!(
        rows[1].trim_start().starts_with('0') && rows[2].trim_start().starts_with('1'),
        "{table}"
    );
    assert!(rows[3].trim_start().starts_with("total"), "{table}");

    let out = verdict(&["stats", "--addr", &server.addr(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shards"].as_array().unwrap().len(), 2);
    assert_eq!(v["total"]["events"], 2);
    assert!(v["shards"][0]["latency_ns"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn ping_prints_round_trips() {
    let server = Server::start();
    let out = verdict(&["ping", "--addr", &server.shard_addr(1), "--count", "3"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert_eq!(s.matches("pong from").count(), 3, "{s}");
    assert!(s.contains("3 pings: min"), "{s}");
    let down = verdict(&["ping", "--addr", "127.0.0.1:1"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(text(&down.stderr).contains("connecting to 127.0.0.1:1"));
}

#[test]
fn topology_shows_the_machine_and_writes_a_file_that_serves() {
    let out = verdict(&["topology"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains("hardware (hwloc)") && s.contains("numa node") && s.contains("shard map"),
        "{s}"
    );

    let dir = common::tempdir::Dir::new("topo");
    let path = dir.0.join("mine.toml");
    let out = verdict(&["topology", "--write", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&path).unwrap();
    let config = verdict_engine::config::TopologyConfig::parse(&written, "mine.toml").unwrap();
    let online = std::thread::available_parallelism().unwrap().get();
    assert_eq!(config.shards.len(), online);
    assert!(
        written.contains("# Largest request payload"),
        "every key is commented"
    );

    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, topology(&[0, 99], "")).unwrap();
    let out = verdict(&["topology", "--shards", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no such cpu"));
}

#[test]
fn serve_refuses_bad_topologies_with_the_key_named() {
    let dir = common::tempdir::Dir::new("bad");
    let cases = [
        (
            topology(&[0], "").replace("port = 0", "port = 0\nportt = 1"),
            "portt",
        ),
        (
            topology(&[0], "pipeline_depth_max = 0"),
            "limits.pipeline_depth_max",
        ),
        (
            topology(&[0, 99], ""),
            "shard[1].cpu: cpu 99 does not exist",
        ),
        (topology(&[0, 0], ""), "shard[1].cpu"),
    ];
    for (i, (toml, needle)) in cases.iter().enumerate() {
        let path = dir.0.join(format!("t{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = verdict(&["serve", "--shards", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "case {i}");
        let err = text(&out.stderr);
        assert!(
            err.contains(needle),
            "case {i}: expected {needle:?} in {err}"
        );
    }
}

#[test]
fn serve_says_which_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = common::tempdir::Dir::new("taken");
    let path = dir.0.join("t.toml");
    std::fs::write(&path, topology(&[0], "")).unwrap();
    let out = verdict(&["serve", "--shards", path.to_str().unwrap(), "--port", &port]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("shared port"),
        "{err}"
    );
}
