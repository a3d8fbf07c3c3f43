//! `verdict-echo`: the reference ceiling server (see `verdict_bench::echo`).
//! Prints `verdict-echo ready: port=P` once listening.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Answers every verdict frame with a fixed response over io_uring, doing no work")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7450")]
    addr: std::net::SocketAddr,
    /// Pin the server to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    verdict_bench::echo::serve(args.addr, args.cpu, |bound| {
        println!("verdict-echo ready: port={}", bound.port());
    })?;
    Ok(())
}
