//! The subcommands that talk to a running engine as clients, plus `verdict topology`,
//! `verdict check`, the offline log tools and `verdict model`.

pub mod cluster;
pub mod log;
pub mod model;
pub mod parquet;
pub mod replay;
pub mod rules;
pub mod send;
pub mod stats;
pub mod topology;

use std::process::ExitCode;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use verdict_net::Client;
use verdict_net::tls::ClientTls;

/// Where client commands connect by default: the shipped shards.toml's shared port.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7400";
/// Where admin commands connect by default: the shipped shards.toml's admin port.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7480";

/// A client for `addr`, over TLS when `tls` is given.
pub fn connect(addr: &str, tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<Client> {
    Client::connect_with(addr, tls).with_context(|| format!("connecting to {addr}"))
}

/// `--tls-ca`, `--tls-cert`, `--tls-key`: how a client command speaks TLS.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Speak TLS, trusting the CA certificates in FILE (PEM) for the server's certificate.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate chain (PEM) for mutual TLS (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client configuration, or `None` for plaintext.
    pub fn config(&self) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let tls = ClientTls {
            ca_file: ca.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
        };
        Ok(Some(tls.config()?))
    }
}

/// `verdict ping`: round trips, one line each, then min/avg/max.
pub fn ping(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    count: u32,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, tls)?;
    let mut times = Vec::with_capacity(count as usize);
    for seq in 0..count.max(1) {
        let rtt = client.ping().with_context(|| format!("ping {addr}"))?;
        println!(
            "pong from {addr}: seq={seq} time={:.1} us",
            rtt.as_secs_f64() * 1e6
        );
        times.push(rtt.as_secs_f64() * 1e6);
    }
    if times.len() > 1 {
        let min = times.iter().cloned().fold(f64::MAX, f64::min);
        let max = times.iter().cloned().fold(0.0, f64::max);
        let avg = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "{} pings: min {min:.1} us, avg {avg:.1} us, max {max:.1} us",
            times.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
