//! The decision log: every decision a core makes, with the event exactly as it arrived and
//! what decided it, appended to that core's own segments under `log.dir`, checksummed.
//!
//! - [`format`]: the bytes (segment header, records, CRC32C), pure; documented in
//!   `engine/src/log/FORMAT.md`.
//! - [`writer`]: one per shard: records are appended to a buffer as a batch is decided, and
//!   the shard's writer task writes the buffer with O_DIRECT on io_uring (glommio's
//!   `DmaFile`: the core never blocks on a syscall), syncs as `log.sync` says,
//!   rotates segments and applies retention. A batch that must wait (`sync = "always"`, or
//!   `on_write_error = "refuse"`) awaits its records before its answers are encoded: group
//!   commit, one write and one sync for every connection's records that arrived meanwhile.
//! - [`recover`]: at start, a shard finds its segments, cuts a torn tail off the last one
//!   and continues from the next sequence number.
//! - [`read`]: reading segments back (verify, export), shared with `verdict log`.
//! - [`published`]: the rule set last published, kept beside the log for a restart.

pub mod format;
pub mod published;
pub mod read;
pub mod recover;
pub mod writer;

use serde::{Deserialize, Serialize};

/// `log.sync`: when written records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// Never (the kernel writes back when it likes).
    Off,
    /// Every `log.sync_interval_ms`.
    Interval,
    /// Before the answers of the batch that made them leave.
    Always,
}

/// `log.on_write_error`: what a decision whose record cannot be written becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnWriteError {
    /// Answer it anyway; count it in `log_unlogged`.
    Answer,
    /// Answer error 9 (`unavailable`) instead: no decision leaves without its record
    /// written (its answer waits for the write).
    Refuse,
}

/// `[log]` in shards.toml.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Directory of every shard's segments. "" = no log (`verdict serve --log-dir` sets it).
    pub dir: String,
    pub sync: Sync,
    /// With `sync = "interval"`: the longest a written record waits for its fsync, ms.
    pub sync_interval_ms: u64,
    /// A segment is closed once it has reached this size, bytes: the next batch's records
    /// begin a new one (a batch's records are never split, so a segment passes it by at
    /// most one batch).
    pub segment_bytes_max: u64,
    /// Oldest closed segments of a shard are deleted while its segments pass this, bytes;
    /// 0 = keep everything.
    pub retention_bytes_max: u64,
    /// Closed segments older than this are deleted, hours; 0 = keep everything.
    pub retention_hours_max: u64,
    /// Records waiting to be written, per shard, bytes: past it (a disk too slow or
    /// failing) decisions are handled as `on_write_error` says.
    pub buffer_bytes_max: u64,
    pub on_write_error: OnWriteError,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: String::new(),
            sync: Sync::Interval,
            sync_interval_ms: 100,
            segment_bytes_max: 256 << 20,
            retention_bytes_max: 0,
            retention_hours_max: 0,
            buffer_bytes_max: 64 << 20,
            on_write_error: OnWriteError::Answer,
        }
    }
}

impl LogConfig {
    pub fn enabled(&self) -> bool {
        !self.dir.is_empty()
    }
}

/// The file name of shard `shard`'s segment starting at `first_seq`: names sort by shard,
/// then by sequence.
pub fn segment_name(shard: u32, first_seq: u64) -> String {
    format!("shard-{shard:04}-{first_seq:020}.vlog")
}

/// `(shard, first_seq)` of a segment file name.
pub fn parse_segment_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("shard-")?.strip_suffix(".vlog")?;
    let (shard, seq) = rest.split_once('-')?;
    Some((shard.parse().ok()?, seq.parse().ok()?))
}

/// Shard `shard`'s segments in `dir` (every shard's when `None`), by shard then sequence.
pub fn segments(
    dir: &std::path::Path,
    shard: Option<u32>,
) -> std::io::Result<Vec<(u32, u64, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((s, seq)) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        if shard.is_none_or(|want| want == s) {
            out.push((s, seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_by_shard_then_sequence() {
        assert_eq!(parse_segment_name(&segment_name(3, 42)), Some((3, 42)));
        assert_eq!(parse_segment_name("shard-1-x.vlog"), None);
        assert!(segment_name(1, 99) < segment_name(1, 100));
        assert!(segment_name(1, u64::MAX) < segment_name(2, 0));
    }
}
