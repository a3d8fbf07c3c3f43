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
//! Next here: `admin_request`, the admin HTTP plane's request handling (`admin.rs`), as a
//! body taking the raw bytes a client sends, with its own `fuzz_targets/admin_request.rs`,
//! a `fuzz/corpus/admin_request/` of real requests, and an entry in the table of
//! `tests/fuzz_corpus.rs`.

use crate::config::{TopologyConfig, render};

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
