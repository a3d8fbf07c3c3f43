//! Just enough HTTP/1.1 for the admin port, both sides: a bounded request parser (httparse
//! underneath) and response writer for the server, and a one-shot client for the CLI.
//!
//! One request per connection (`Connection: close`): the admin port serves scrapers and
//! operators, not browsers, and a connection that ends with its answer can hold nothing.
//! Bodies need a `Content-Length`; chunked requests are refused (411).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Most headers a request may carry.
pub const HEADERS_MAX: usize = 32;

/// What one request may make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    /// The config keys of the two bounds, named in the errors.
    pub keys: BoundKeys,
}

/// The config keys an HTTP server's bounds come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundKeys {
    pub header_bytes_max: &'static str,
    pub body_bytes_max: &'static str,
}

/// The admin port's bounds' keys.
pub const ADMIN_KEYS: BoundKeys = BoundKeys {
    header_bytes_max: "admin.header_bytes_max",
    body_bytes_max: "admin.body_bytes_max",
};

/// A parsed request. Header names are lower-cased.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request the server answers with an error status and closes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request line and headers over {max} bytes ({key})")]
    HeadersTooLarge { max: usize, key: &'static str },
    #[error("body of {len} bytes over {max} ({key})")]
    BodyTooLarge {
        len: u64,
        max: usize,
        key: &'static str,
    },
    #[error("a body needs a Content-Length (chunked bodies are not accepted)")]
    LengthRequired,
    #[error("only HTTP/1.0 and HTTP/1.1 are served")]
    Version,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadersTooLarge { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::LengthRequired => 411,
            HttpError::Version => 505,
        }
    }
}

/// The head of a request at the start of a buffer, borrowed from it: what a server needs
/// to route the request and to know where it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head<'a> {
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Bytes of the request line and headers.
    pub head_len: usize,
    /// The body's bytes (its `Content-Length`, 0 without one).
    pub body_len: usize,
    /// `Connection: close` (or HTTP/1.0 without `Connection: keep-alive`).
    pub close: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before the body.
    pub expects_continue: bool,
}

/// Parses the head of the request at the start of `buf`. `Ok(None)`: not whole yet (read
/// more). Every limit is checked before anything is kept; the body may not have arrived.
pub fn parse_head(
    buf: &[u8],
    bounds: Bounds,
    mut each_header: impl FnMut(&str, &str),
) -> Result<Option<Head<'_>>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > bounds.header_bytes_max => {
            return Err(HttpError::HeadersTooLarge {
                max: bounds.header_bytes_max,
                key: bounds.keys.header_bytes_max,
            });
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > bounds.header_bytes_max => {
            return Err(HttpError::HeadersTooLarge {
                max: bounds.header_bytes_max,
                key: bounds.keys.header_bytes_max,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::Malformed(format!(
                "more than {HEADERS_MAX} headers"
            )));
        }
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let minor_version = parsed.version.unwrap_or(1);
    let mut content_length = None::<u64>;
    let (mut close, mut keep_alive, mut expects_continue) = (false, false, false);
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // Digits only: `+5` parses as a u64 but is not a Content-Length (RFC 9110 8.6), and
            // two readers of it could disagree on where the body ends.
            let len = value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    HttpError::Malformed(format!("Content-Length {value:?} is not a number"))
                })?;
            if content_length.replace(len).is_some() {
                return Err(HttpError::Malformed("two Content-Length headers".into()));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case("100-continue");
        }
        each_header(h.name, value);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > bounds.body_bytes_max as u64 {
        return Err(HttpError::BodyTooLarge {
            len: content_length,
            max: bounds.body_bytes_max,
            key: bounds.keys.body_bytes_max,
        });
    }
    let target = parsed.path.unwrap_or("/");
    Ok(Some(Head {
        method: parsed.method.unwrap_or(""),
        path: target.split('?').next().unwrap_or(""),
        minor_version,
        head_len,
        body_len: content_length as usize,
        close: close || (minor_version == 0 && !keep_alive),
        expects_continue,
    }))
}

/// Parses the request at the start of `buf`. `Ok(None)`: not whole yet (read more). Every
/// limit is checked before anything is kept.
pub fn parse_request(buf: &[u8], bounds: Bounds) -> Result<Option<Request>, HttpError> {
    let mut kept = Vec::new();
    let Some(head) = parse_head(buf, bounds, |name, value| {
        kept.push((name.to_ascii_lowercase(), value.to_string()))
    })?
    else {
        return Ok(None);
    };
    let end = head.head_len + head.body_len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Request {
        method: head.method.to_string(),
        path: head.path.to_string(),
        headers: kept,
        body: buf[head.head_len..end].to_vec(),
    }))
}

/// Reads one request from `stream`: all of it within `deadline`, at most the bounds in bytes.
/// `Ok(None)`: the peer closed (or sent nothing) before a whole request arrived.
pub fn read_request(
    stream: &mut impl ReadTimeout,
    bounds: Bounds,
    deadline: Instant,
) -> Result<Option<Request>, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(request) = parse_request(&buf, bounds).map_err(ReadError::Http)? {
            return Ok(Some(request));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut {
                started: !buf.is_empty(),
            });
        }
        stream.set_timeout(Some(left)).map_err(ReadError::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(ReadError::Http(HttpError::Malformed("cut short".into()))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::TimedOut {
                    started: !buf.is_empty(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Why no request came.
#[derive(Debug)]
pub enum ReadError {
    Http(HttpError),
    /// The deadline passed (`started`: after some bytes, which earns the client a 408).
    TimedOut {
        started: bool,
    },
    Io(io::Error),
}

/// A stream whose reads can be bounded in time (a socket, a TLS stream over one).
pub trait ReadTimeout: Read {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl ReadTimeout for TcpStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

/// A socket whose reads must all be done by one deadline: each read waits at most the time
/// left, so a peer sending a byte now and then cannot stretch it (rustls' handshake and
/// record reads loop over many socket reads).
pub struct Deadlined {
    pub tcp: TcpStream,
    pub read_by: Instant,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.read_by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The server side of an admin connection: plain, or TLS over it; reads bounded by one
/// deadline either way.
pub enum ServerStream {
    Plain(Deadlined),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, Deadlined>>),
}

impl ServerStream {
    /// Plain, or TLS with `config` once the handshake is done, all of it by `deadline`.
    pub fn accept(
        stream: TcpStream,
        config: Option<std::sync::Arc<rustls::ServerConfig>>,
        deadline: Instant,
    ) -> io::Result<ServerStream> {
        let socket = Deadlined {
            tcp: stream,
            read_by: deadline,
        };
        let Some(config) = config else {
            return Ok(ServerStream::Plain(socket));
        };
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, socket);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(ServerStream::Tls(Box::new(tls)))
    }

    fn socket(&mut self) -> &mut Deadlined {
        match self {
            ServerStream::Plain(s) => s,
            ServerStream::Tls(t) => &mut t.sock,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(s) => &s.tcp,
            ServerStream::Tls(t) => &t.sock.tcp,
        }
    }

    /// Ends our sending side (after a TLS close_notify).
    pub fn shutdown_write(&mut self) {
        if let ServerStream::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.conn.complete_io(&mut t.sock);
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for ServerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Plain(s) => s.read(buf),
            ServerStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for ServerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ServerStream::Plain(s) => s.write(buf),
            ServerStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ServerStream::Plain(s) => s.flush(),
            ServerStream::Tls(t) => t.flush(),
        }
    }
}

impl ReadTimeout for ServerStream {
    /// Moves the deadline every read is bounded by (`None`: an hour, a bound all the same).
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let left = timeout.unwrap_or(Duration::from_secs(3600));
        self.socket().read_by = Instant::now() + left;
        Ok(())
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A response, written whole and followed by a close.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body: serde_json::to_string_pretty(body).unwrap_or_default() + "\n",
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; `head`: a HEAD request's answer (headers only).
    pub fn to_bytes(&self, head: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The client half: one request, one response (status and body), all within `timeout`;
/// over TLS when `tls` is given.
pub fn call(
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let target = addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address"))
    })?;
    let tcp = TcpStream::connect_timeout(&target, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut stream = match tls {
        Some(config) => verdict_net::tls::Stream::tls(tcp, config, addr)?,
        None => verdict_net::tls::Stream::Plain(tcp),
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut response = Vec::new();
    // The server closes after its answer; a bounded read keeps a rogue one from filling us.
    // (A TLS peer that closes without close_notify still ended its answer: keep what came.)
    match (&mut stream)
        .take(RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut response)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&response)
}

/// Largest response the client reads.
const RESPONSE_BYTES_MAX: usize = 64 << 20;

fn parse_response(bytes: &[u8]) -> io::Result<(u16, String)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("HTTP response: {m}"));
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Response::new(&mut headers);
    let head = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(bad("cut short")),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let status = parsed.code.ok_or_else(|| bad("no status"))?;
    Ok((status, String::from_utf8_lossy(&bytes[head..]).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        header_bytes_max: 256,
        body_bytes_max: 16,
        keys: ADMIN_KEYS,
    };

    #[test]
    fn whole_requests_parse_and_partial_ones_wait() {
        let raw = b"POST /v1/reload?x=1 HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 5\r\n\r\nhello";
        let r = parse_request(raw, BOUNDS).unwrap().unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/reload");
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.body, b"hello");
        for cut in 0..raw.len() {
            assert_eq!(parse_request(&raw[..cut], BOUNDS), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn every_bound_has_its_status() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
        let e = parse_request(long.as_bytes(), BOUNDS).unwrap_err();
        assert_eq!(e.status(), 431);
        // Headers that never end are refused once past the bound, not buffered forever.
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "b".repeat(300));
        assert_eq!(
            parse_request(endless.as_bytes(), BOUNDS)
                .unwrap_err()
                .status(),
            431
        );
        let big = b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n";
        assert_eq!(parse_request(big, BOUNDS).unwrap_err().status(), 413);
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(chunked, BOUNDS).unwrap_err().status(), 411);
        let signed = b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx";
        assert_eq!(parse_request(signed, BOUNDS).unwrap_err().status(), 400);
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(parse_request(twice, BOUNDS).unwrap_err().status(), 400);
        let garbage = b"\x00\x01\x02 nonsense\r\n\r\n";
        assert_eq!(parse_request(garbage, BOUNDS).unwrap_err().status(), 400);
        let many: String = (0..40).map(|i| format!("h{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let roomy = Bounds {
            header_bytes_max: 4096,
            ..BOUNDS
        };
        assert_eq!(
            parse_request(many.as_bytes(), roomy).unwrap_err().status(),
            400
        );
    }

    #[test]
    fn heads_say_whether_the_connection_goes_on() {
        let head = |raw: &'static [u8]| parse_head(raw, BOUNDS, |_, _| {}).unwrap().unwrap();
        let h = head(b"POST /v1/decide?x HTTP/1.1\r\nContent-Length: 3\r\n\r\nab");
        assert_eq!(
            (h.method, h.path, h.body_len, h.close),
            ("POST", "/v1/decide", 3, false)
        );
        assert_eq!(h.head_len, 49);
        assert!(head(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").close);
        assert!(head(b"GET / HTTP/1.0\r\n\r\n").close);
        assert!(!head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(head(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expects_continue);
        let h2 = parse_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", BOUNDS, |_, _| {});
        assert_eq!(h2.unwrap_err().status(), 505);
        let mut seen = Vec::new();
        head(b"GET / HTTP/1.1\r\nX-A: 1\r\nContent-Type: a/b\r\n\r\n");
        parse_head(b"GET / HTTP/1.1\r\nX-A:  1 \r\n\r\n", BOUNDS, |n, v| {
            seen.push((n.to_string(), v.to_string()))
        })
        .unwrap();
        assert_eq!(seen, [("X-A".to_string(), "1".to_string())]);
    }

    #[test]
    fn responses_round_trip_through_the_client_parser() {
        let r = Response::text(401, "no\n").with_header("WWW-Authenticate", "Bearer");
        let bytes = r.to_bytes(false);
        assert_eq!(parse_response(&bytes).unwrap(), (401, "no\n".to_string()));
        let head = r.to_bytes(true);
        assert_eq!(parse_response(&head).unwrap(), (401, String::new()));
    }
}
