//! TLS for clients (and the PEM loading both ends share): rustls with the ring provider.
//!
//! A client trusts one CA file (`--tls-ca`) and, for mutual TLS, presents a certificate
//! chain and key (`--tls-cert`, `--tls-key`). PEM files are read whole but bounded; errors
//! name the file and never quote it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Largest PEM file read, bytes.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// A TLS setup problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

fn tls_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The bytes of a PEM file (a regular file, at most [`PEM_FILE_BYTES_MAX`]).
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = std::fs::File::open(path).map_err(|e| tls_error(path, e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| tls_error(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(tls_error(path, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| tls_error(path, e.to_string()))?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(tls_error(path, format!("over {PEM_FILE_BYTES_MAX} bytes")));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| tls_error(path, format!("no private key: {e}")))
}

/// A store of the CA certificates in `path`.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store
            .add(cert)
            .map_err(|e| tls_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The ring provider, for both ends.
// ring, not aws-lc-rs: it builds with a C compiler alone (no cmake, no nasm). rustls marks it
// deprecated because it has no post-quantum key exchange; classical X25519/P-256 it has.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a client needs to speak TLS: the CA it trusts and, for mutual TLS, its own chain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTls {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&self.ca_file, e.to_string()))?
            .with_root_certificates(roots(&self.ca_file)?);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| tls_error(cert, e.to_string()))?,
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => {
                return Err(tls_error(cert, "a client certificate needs its key"));
            }
            (None, Some(key)) => return Err(tls_error(key, "a client key needs its certificate")),
        };
        Ok(Arc::new(config))
    }
}

/// The name the client checks the server's certificate for: the host part of `addr` (an IP
/// address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, io::Error> {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))
}

/// A client byte stream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// Wraps `tcp` in TLS for `addr`'s host and completes the handshake.
    pub fn tls(tcp: TcpStream, config: Arc<ClientConfig>, addr: &str) -> io::Result<Stream> {
        let connection = ClientConnection::new(config, server_name(addr)?)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Stream::Tls(Box::new(stream)))
    }

    /// The socket underneath (timeouts, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Test support: a CA (`ca.pem`), a server certificate for 127.0.0.1 and localhost
/// (`server.pem`, `server.key`) and a client certificate (`client.pem`, `client.key`) made
/// by the `openssl` command in `dir`. Panics with openssl's message if it fails.
#[doc(hidden)]
pub fn make_test_pki(dir: &Path) {
    std::fs::create_dir_all(dir).expect("a directory for the test PKI");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
    ca.extend(["-subj", "/CN=verdict test CA"]);
    // Stated, not left to openssl's defaults: strict verifiers (Python 3.13's ssl) refuse a
    // CA certificate without keyUsage.
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem, extfile) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        std::fs::write(
            dir.join(&extfile),
            format!("basicConstraints=CA:FALSE\n{ext}"),
        )
        .expect("writing an openssl extension file");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=verdict test"]);
        run(&req);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_address() {
        assert!(matches!(
            server_name("127.0.0.1:7400").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7400").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("risk.example:7400").unwrap(),
            ServerName::DnsName(_)
        ));
    }

    #[test]
    fn missing_and_empty_pem_files_name_the_file() {
        let e = certificates(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/ca.pem: "), "{e}");
        let path = std::env::temp_dir().join(format!("verdict-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a pem file at all\n").unwrap();
        let e = certificates(&path).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        assert!(!e.contains("not a pem file"), "never quoted: {e}");
        let e = private_key(&path).unwrap_err().to_string();
        assert!(e.contains("no private key"), "{e}");
        std::fs::remove_file(path).unwrap();
    }
}
