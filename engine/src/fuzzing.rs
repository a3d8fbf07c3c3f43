//! The body of each fuzz target (`engine/fuzz/fuzz_targets/<name>.rs` calls
//! `fuzzing::<name>`) and of the corpus replay test (`tests/fuzz_corpus.rs` runs every file
//! under `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through the same function). Not
//! an API: each function takes arbitrary bytes, drives the real code path, and panics when a
//! property that must hold for any input does not.
//!
//! - [`topology`]: a `shards.toml`, through [`TopologyConfig::parse`] (serde, then
//!   [`TopologyConfig::check`]). A file that passes describes a topology that can start:
//!   shards on distinct CPUs, and every port it names (shared, each shard's, admin) distinct.
//!   Checking it again passes, and [`render`] writes it as a file that parses back to the
//!   same topology (the one `verdict topology --write` produces). A file that fails gets an
//!   error naming the file or the key.
//!
//! - [`admin_request`]: the bytes a client sends the admin port, through the bounded request
//!   parser ([`crate::http::parse_request`]) under small bounds: no panic; a request is
//!   only ever taken whole and within the bounds (its body no longer than the body bound,
//!   its path without the query); every refusal carries the status the server answers (400,
//!   411, 413, 431); and whatever was parsed, the answer the routes give it without a
//!   token configured is one of theirs and renders as a response.
//!
//! - [`log_segment`]: a decision log segment's bytes, through every reader: `verify`'s
//!   check, `export`'s rows and `replay`'s index. No panic, whatever the bytes; the readers
//!   agree (every record `verify` counts is one export or replay saw, every decision replay
//!   keeps is one export turned into a row), and every event replay keeps passes the checks
//!   an event passes on receipt.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use verdict_rules::VelocityState;

use crate::admin::Routes;
use crate::config::{TopologyConfig, render};
use crate::http::{Bounds, HttpError, parse_request};
use crate::metrics::Plane;

/// Fuzz target `admin_request`: parse (and route) what a client sends the admin port.
pub fn admin_request(data: &[u8]) {
    let bounds = Bounds {
        header_bytes_max: 512,
        body_bytes_max: 64,
        keys: crate::http::ADMIN_KEYS,
    };
    match parse_request(data, bounds) {
        Ok(None) => assert!(
            data.len() <= bounds.header_bytes_max + bounds.body_bytes_max,
            "waited for more after {} bytes",
            data.len()
        ),
        Ok(Some(request)) => {
            assert!(request.body.len() <= bounds.body_bytes_max);
            assert!(!request.path.contains('?'), "{:?}", request.path);
            assert!(!request.method.is_empty());
            let response = routes().answer(&request);
            assert!(
                [200, 401, 403, 404, 405, 503].contains(&response.status),
                "{} for {request:?}",
                response.status
            );
            let bytes = response.to_bytes(request.method == "HEAD");
            assert!(bytes.starts_with(b"HTTP/1.1 "));
        }
        Err(e) => {
            let status = e.status();
            assert!([400, 411, 413, 431, 505].contains(&status), "{e:?}");
            if let HttpError::BodyTooLarge { len, max, .. } = e {
                assert!(len > max as u64);
            }
        }
    }
}

/// The admin routes as an engine without a token has them (reads answer, the control API
/// refuses with 403 before anything would run), with one shard that never reported.
fn routes() -> Routes {
    Routes {
        plane: Arc::new(Mutex::new(Plane::new(
            vec![0],
            None,
            Duration::from_secs(1),
        ))),
        reloads: crate::reload::Reloads::stopped(),
        token: None,
        token_for_reads: false,
        reload_timeout: Duration::from_millis(1),
    }
}

/// Where the fuzzed topology file claims to live.
const PATH: &str = "fuzz/shards.toml";

/// Fuzz target `topology`: parse and check a topology file.
pub fn topology(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match TopologyConfig::parse(text, PATH) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    config
        .check()
        .expect("a topology that passed its checks passes them again");
    let cpus = config.shards.iter().map(|s| s.cpu);
    for (i, cpu) in cpus.clone().enumerate() {
        assert!(
            !cpus.clone().take(i).any(|c| c == cpu),
            "cpu {cpu} has two shards"
        );
    }
    let listen = &config.listen;
    let mut ports: Vec<u16> = Vec::new();
    if listen.port != 0 {
        ports.push(listen.port);
    }
    if listen.shard_port_base != 0 {
        let shards = u16::try_from(config.shards.len()).expect("at most 1024 shards");
        let last = listen
            .shard_port_base
            .checked_add(shards - 1)
            .expect("shard ports run past 65535");
        ports.extend(listen.shard_port_base..=last);
    }
    if listen.admin_port() != 0 {
        ports.push(listen.admin_port());
    }
    if listen.http_port != 0 {
        ports.push(listen.http_port);
    }
    let count = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), count, "two listeners on one port: {listen:?}");
    let written = render(&config, "# fuzz\n");
    let back = TopologyConfig::parse(&written, "rendered.toml")
        .unwrap_or_else(|e| panic!("a rendered topology does not parse: {e}\n{written}"));
    let mut want = config.clone();
    want.listen.admin_port = Some(config.listen.admin_port());
    assert_eq!(
        back, want,
        "render, then parse, changed the topology\n{written}"
    );
}

/// Fuzz target `log_segment`: read a decision log segment as verify, export and replay do.
pub fn log_segment(data: &[u8]) {
    use crate::log::read;
    let mut bytes = rkyv::util::AlignedVec::<16>::new();
    bytes.extend_from_slice(data);
    let path = Path::new("shard-0000-00000000000000000001.vlog");
    let check = read::check_bytes(path, &bytes, None);
    let records = read::records(&bytes);
    assert_eq!(
        records.len() as u64,
        check.records,
        "verify and export count other records"
    );
    let mut rows = read::Rows::default();
    let decisions = records.iter().filter(|r| rows.row(r).is_some()).count();
    let names = Mutex::new(Vec::new());
    let owners: Vec<VelocityState> = (0..2).map(|_| VelocityState::new(1)).collect();
    let prep = crate::replay::Prep {
        rules: fuzz_rules(),
        owners: &owners,
    };
    let mut rows = Vec::new();
    let (events, skipped) = crate::replay::read_segment(path, &bytes, &names, &prep, 0, &mut rows);
    assert_eq!(rows.len(), events.len() * (4 + 3), "a row per event");
    assert!(
        events.len() + skipped.decisions() as usize <= decisions,
        "replay read {} decisions and skipped {}, export saw {decisions}",
        events.len(),
        skipped.decisions()
    );
    for e in &events {
        assert!(verdict_net::validate::validate_event(e.event).is_ok());
        assert!(crate::log::format::DecisionRecord::parse(e.body).is_some());
    }
}

/// A rule set counting by every key (three functions), for `log_segment`.
fn fuzz_rules() -> &'static verdict_rules::RuleSet {
    static RULES: std::sync::OnceLock<verdict_rules::RuleSet> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let text = "rule r { when count(device, 10m) >= 2 and sum(amount, ip, 1h) > 5 \
                    and distinct(account, merchant, 1h) > 1  score 10 }\n";
        let files = verdict_rules::Memory(vec![("fuzz.rules".into(), text.into())]);
        verdict_rules::load(
            Path::new("fuzz.rules"),
            &files,
            &verdict_rules::Options::default(),
        )
        .expect("the fuzz rule set compiles")
    })
}
