//! The fuzz corpus as an ordinary test (CI runs no fuzzer). Every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through
//! `verdict_engine::fuzzing::<target>`, the same body `cargo fuzz` runs. Proves that topology
//! parsing and checking, and the admin port's request parsing and routing, hold their
//! properties on every seed and every crash found so far (no panic; an accepted file has
//! distinct CPUs and ports and renders back to itself; a request is taken whole and within
//! its bounds, a refusal carries its status), so a fixed crash stays fixed.
//!
//! The seeds are the repository's shards.toml and variants of it, written by `write_seeds`
//! (ignored here): `cargo test -p verdict-engine --test fuzz_corpus -- --ignored`.

use std::path::Path;

use verdict_engine::config::{FILE_HEADER, TopologyConfig, render};
use verdict_engine::fuzzing;
use verdict_net::fuzzing::Target;

const TARGETS: [Target; 3] = [
    ("topology", fuzzing::topology),
    ("admin_request", fuzzing::admin_request),
    ("log_segment", fuzzing::log_segment),
];

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn corpus_and_regressions_replay_without_a_panic() {
    verdict_net::fuzzing::assert_replays(&crate_dir().join("fuzz"), &TARGETS);
}

#[test]
#[ignore = "rewrites the committed seeds; run after changing shards.toml or its keys"]
fn write_seeds() {
    let dir = crate_dir().join("fuzz/corpus/topology");
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::fs::read_to_string(crate_dir().join("../shards.toml")).unwrap();
    let mut wide = TopologyConfig::for_cpus(&(0..16).collect::<Vec<_>>());
    wide.listen.address = "::1".parse().unwrap();
    wide.listen.admin_port = Some(0);
    wide.models.cache_dir = "off".into();
    let seeds = [
        ("shards_toml", shipped),
        ("rendered_16_shards_ipv6", render(&wide, FILE_HEADER)),
        (
            "minimal",
            "[listen]\naddress = \"127.0.0.1\"\nport = 7400\nshard_port_base = 7410\n[[shard]]\ncpu = 0\n[[shard]]\ncpu = 1\n".into(),
        ),
        (
            "free_ports_no_admin",
            "[listen]\naddress = \"0.0.0.0\"\nport = 0\nshard_port_base = 0\n[[shard]]\ncpu = 3\n[decision]\ndefault_action = \"review\"\n".into(),
        ),
        (
            "errors",
            "[listen]\naddress = \"10.0.0.1\"\nport = 7411\nshard_port_base = 7410\nadmin_port = 7410\n[[shard]]\ncpu = 0\n[[shard]]\ncpu = 0\n[limits]\nbatch_events_max = 0\n".into(),
        ),
    ];
    for (name, text) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), text).unwrap();
    }
}
