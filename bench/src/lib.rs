//! verdict-bench: measuring verdict.
//!
//! - [`events`]: seeded events with a realistic shape (or a JSON-lines file), pre-encoded.
//! - [`load`]: `verdict-load`'s core: thread-per-core monoio clients, closed and open loop,
//!   merged HdrHistograms, errors and timeouts counted.
//! - [`echo`]: `verdict-echo`, the reference ceiling: same framing, fixed answers, no work.
//! - [`report`]: table rows, JSON and `.hgrm` output.
//! - [`sweep`]: what `scripts/latency.sh` runs: reference and engine side by side, the
//!   open-loop sweep, summary files and the plot.
//! - `benches/hot_path.rs`: criterion benches of the engine's per-request work.

pub mod echo;
pub mod events;
pub mod load;
pub mod report;
pub mod sweep;
