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
pub mod tls;

/// Runs `future` on a monoio runtime for one generator or echo thread: io_uring (epoll where
/// the kernel has none), timers on, 1024 ring entries, and, where the kernel has it
/// (Linux 5.19), cooperative task running: a completion caused by the other side's CPU then
/// waits for this thread's next kernel entry instead of interrupting it. The engine's rings
/// ask for the same, so the reference ceiling and the engine are measured alike.
pub fn run_monoio<F: std::future::Future>(future: F) -> std::io::Result<F::Output> {
    let build = |coop: bool| {
        let mut ring = monoio_io_uring::IoUring::builder();
        if coop {
            ring.setup_coop_taskrun();
        }
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .with_entries(1024)
            .uring_builder(ring)
            .build()
    };
    let mut rt = build(true).or_else(|_| build(false))?;
    Ok(rt.block_on(future))
}
