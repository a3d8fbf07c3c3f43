//! TLS on the server side: the rustls `ServerConfig` built from `[tls]` (certificate chain,
//! key, and for mutual TLS the client CA). Built at start and again on every reload, so a
//! renewed certificate is served without a restart; it travels in the epoch
//! ([`crate::scoring::Published::tls`]), so every core and the admin port take the new one
//! for their next connection. Connections keep the configuration they shook hands with.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use verdict_net::tls;

use crate::config::TlsConfig;

/// Memory a TLS connection holds beyond a plaintext one (rustls' buffers and ours), counted
/// against `limits.connection_memory_bytes_max` at accept, bytes.
pub const TLS_CONNECTION_BYTES: u64 = 64 * 1024;

/// The server configuration for `config`, `None` when TLS is off. Errors name the file.
pub fn server_config(config: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, String> {
    if !config.enabled() {
        return Ok(None);
    }
    let certs = tls::certificates(Path::new(&config.cert_file))
        .map_err(|e| format!("tls.cert_file {e}"))?;
    let key =
        tls::private_key(Path::new(&config.key_file)).map_err(|e| format!("tls.key_file {e}"))?;
    let builder = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = if config.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = tls::roots(Path::new(&config.client_ca_file))
            .map_err(|e| format!("tls.client_ca_file {e}"))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider())
                .build()
                .map_err(|e| format!("tls.client_ca_file {}: {e}", config.client_ca_file))?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "tls.key_file {}: does not match the certificate or is unusable: {e}",
            config.key_file
        )
    })?;
    Ok(Some(Arc::new(config)))
}
