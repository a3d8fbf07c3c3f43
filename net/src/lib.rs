//! verdict-net: everything a client or server needs to speak verdict's wire protocol, and
//! nothing else (no runtime, no engine: a client that depends on this pulls in rkyv, serde
//! and futures-io traits only).
//!
//! Layout, top-down along the data path:
//! - [`frame`]: the 16-byte header and 16-aligned padded frames; pure scan / encode.
//! - [`schema`]: the rkyv payload types (events, decisions, errors, stats, topology) and
//!   the borrowed views the server serializes without allocating.
//! - [`validate`]: field-range checks on an archived event.
//! - [`codes`]: the error codes of error frames.
//! - [`routing`]: partitions and the partition table: which shard owns an account (or a
//!   device, an IP, a merchant).
//! - [`json`]: the JSON-lines forms of events and decisions.
//! - [`client`]: a blocking client and an async pipelined client.
//! - [`sharded`]: shard-aware clients: one connection per shard, each event to its owner.
//! - [`tls`]: TLS for clients (rustls), and the PEM loading the server shares.
//!
//! `fuzzing` (hidden) holds the bodies of the fuzz targets in `net/fuzz/`, which
//! `tests/fuzz_corpus.rs` also runs over the committed corpus.

pub mod client;
pub mod codes;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod json;
pub mod routing;
pub mod schema;
pub mod sharded;
pub mod tls;
pub mod validate;

pub use client::{AsyncClient, Client, ClientError, Codec, Response};
pub use codes::ErrorCode;
pub use frame::{FrameEncoder, FrameError, Header, Kind};
pub use schema::*;
pub use sharded::{AsyncShardedClient, ShardedClient};

/// A well-formed event for tests and examples.
#[doc(hidden)]
pub fn test_event(event_id: &str, account_id: &str, amount_minor: i64) -> Event {
    Event {
        event_id: event_id.into(),
        timestamp_ms: 1_700_000_000_000,
        account_id: account_id.into(),
        merchant_id: "m-1".into(),
        amount_minor,
        currency: "USD".into(),
        country: "US".into(),
        channel: "web".into(),
        device_id: "d-1".into(),
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9)),
        mcc: 5411,
        features: vec![],
        attributes: vec![],
    }
}
