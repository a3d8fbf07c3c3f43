//! verdict-engine: the thread-per-core server and the `verdict` binary.
//!
//! Layout, along the data path:
//! - [`config`]: `shards.toml` (serde, unknown keys rejected), limits, defaults, rendering.
//! - [`hardware`], [`uring`], [`memlock`]: what the machine offers, checked before start.
//! - [`runtime`]: the control thread: start pinned executors, publish the shard map, signals.
//! - [`listen`]: a shard's life on its core: join the mesh, bind, accept, drain on shutdown.
//! - [`shard`]: one core's state (rules, models, velocity, stats, buffers, the mesh port).
//! - [`drain`]: the per-core shutdown signal connections and accept loops wait on.
//! - [`connection`]: one connection's I/O: read -> whole frames -> answers -> write.
//! - [`request`]: one request kind per file: evaluate and evaluate-batch, stats, reload.
//! - [`aggregator`]: decides a batch exactly whichever shard it arrived on: forwards events
//!   to their account's owner, gathers the windows of keys other shards own.
//! - [`buffers`]: the shard's connection memory: a budget, response buffers for reuse.
//! - [`transport`]: a connection's bytes, plain or TLS (handshake on the shard's core);
//!   [`tls`]: the server's rustls configuration, rebuilt on every reload.
//! - [`decide`]: the pure decision for a batch of events.
//! - [`log`]: the decision log: per-core segments, recovery, reading them back.
//! - [`stats`]: per-core counters and histograms; merging snapshots.
//! - [`loop_time`]: a shard's wall time split (busy, io_poll, parked), exact by construction.
//! - [`watch`]: times every task poll (stalls).
//! - [`mesh`]: cross-shard messages (the only way cores talk), bounded per peer.
//! - [`metrics`]: the control thread's metrics plane: shards' snapshots (thingbuf) + eBPF.
//! - [`reload`]: where an epoch comes from (rules confined to `rules.dir`, models) and the
//!   reload thread that compiles and publishes the next one.
//! - [`admin`]: the admin port off the data cores: reads (`/metrics`, `/stats`, `/healthz`,
//!   `/readyz`) and the token-authenticated control API (`POST /v1/reload`), bounded.
//! - [`http_api`]: HTTP/1.1 + JSON on the data cores (`listen.http_port`), translated into
//!   frames and answered by the same request pipeline as the binary port.
//! - [`http`]: the bounded HTTP/1.1 parser and writer (the admin port's both ends, and the
//!   head parser [`http_api`] uses).
//! - [`cluster`]: this engine as a node of a cluster: membership and the partition map in
//!   NATS JetStream, on a thread of its own ([`cluster::broker`], [`cluster::table`]).
//! - [`cli`]: the subcommands that are clients (send, stats, ping, topology, cluster).
//!
//! `fuzzing` (hidden) holds the bodies of the fuzz targets in `engine/fuzz/`, which
//! `tests/fuzz_corpus.rs` also runs over the committed corpus.

pub mod admin;
pub mod aggregator;
pub mod buffers;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod decide;
pub mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod hardware;
pub mod http;
pub mod http_api;
pub mod listen;
pub mod log;
pub mod loop_time;
pub mod memlock;
pub mod mesh;
pub mod metrics;
pub mod reload;
pub mod replay;
pub mod request;
pub mod runtime;
pub mod scoring;
pub mod shard;
pub mod stats;
pub mod tls;
pub mod transport;
pub mod uring;
pub mod watch;
