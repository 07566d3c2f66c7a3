//! The data-plane HTTP/1.1 client that runs on each engine core.
//!
//! A request either finds an idle keep-alive connection in the core's pool or opens one; its
//! response head is parsed from a small read-ahead buffer and its body is read straight into
//! the caller's aligned buffers. Redirects are followed here, so callers see only the final
//! response; headers the caller added (credentials) are never sent to another host.

pub mod conn;
pub mod head;
pub mod proxy;
pub mod tls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use url::Url;

use crate::buf::AlignedBuf;
use conn::{Conn, Endpoint};
use head::{HeadError, ResponseHead};
use proxy::{ProxyConfig, ProxyServer};

/// What every request of a pull has in common, whichever plane sends it: the I/O driver, the
/// trust roots, the timeouts and the proxies. The control plane (`store::Control`) is built
/// from it alone; a pull's `Options` give theirs with `Options::client`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The I/O driver control-plane requests run on.
    pub driver: crate::runtime::DriverChoice,
    /// Extra CA certificates (PEM) trusted besides the system's and webpki's roots.
    pub ca_bundle: Option<tls::CaBundle>,
    /// Hosts whose TLS certificates are not verified.
    pub insecure_hosts: Vec<String>,
    /// How long a connection may take to open, and to stay silent.
    pub timeouts: Timeouts,
    /// Forward proxies, `None` for direct connections; the CA of one that intercepts HTTPS
    /// goes with them ([`ProxyConfig::ca_bundle`]).
    pub proxy: Option<Arc<ProxyConfig>>,
}

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// Idle connections kept per endpoint on one core.
const MAX_IDLE: usize = 64;

/// A failed request, with enough context to say what failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The TCP connection (or the proxy's) could not be opened.
    #[error("cannot connect to {host}: {source}")]
    Connect {
        /// The host and port.
        host: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (an untrusted or expired certificate, a name mismatch, …).
    #[error("TLS with {host} failed: {message}")]
    Tls {
        /// The host and port.
        host: String,
        /// What rustls said.
        message: String,
    },
    /// Connecting took longer than the connect timeout, or no byte came for the stall timeout.
    #[error("{what} timed out talking to {host}")]
    Timeout {
        /// What timed out: `connect`, `proxy CONNECT`, `TLS handshake` or a read.
        what: &'static str,
        /// The host and port.
        host: String,
    },
    /// Reading or writing the connection failed.
    #[error("connection to {host} failed: {source}")]
    Io {
        /// The host and port.
        host: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection before the response ended.
    #[error("{host} closed the connection early")]
    Closed {
        /// The host and port.
        host: String,
    },
    /// The response head could not be parsed.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// The server answered a status the request cannot use.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The URL, redacted.
        url: String,
        /// The pause the server asked for with `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A URL that does not parse.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A scheme other than http or https.
    #[error("unsupported URL scheme `{0}` (use http or https)")]
    UnsupportedScheme(String),
    /// A redirect that is not followed (too many, or to another scheme).
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// The response broke HTTP/1.1 framing (`Content-Range`, chunked encoding, lengths).
    #[error("{0}")]
    Protocol(String),
    /// The forward proxy refused the tunnel or answered badly.
    #[error("{0}")]
    Proxy(String),
}

impl HttpError {
    /// Whether trying again (after a pause) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Connect { .. }
            | HttpError::Timeout { .. }
            | HttpError::Io { .. }
            | HttpError::Closed { .. }
            | HttpError::Head(_)
            | HttpError::Protocol(_) => true,
            HttpError::Status { status, .. } => {
                matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
            }
            HttpError::Tls { .. }
            | HttpError::InvalidUrl(_)
            | HttpError::UnsupportedScheme(_)
            | HttpError::Redirect(_)
            | HttpError::Proxy(_) => false,
        }
    }

    /// The pause a server asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Timeouts of one client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// No byte received for this long: the connection is given up.
    pub stall: Duration,
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a Url,
    /// Inclusive byte range.
    pub range: Option<(u64, u64)>,
    /// Extra headers (credentials), sent only to `headers_for`.
    pub headers: &'a [(String, String)],
    /// The origin (scheme, host, port) the headers were given for; `None` means the request
    /// URL's. A request that goes to a cached redirect target names the source's here.
    pub headers_for: Option<&'a Endpoint>,
    /// A request body (control-plane POSTs); sent with `Content-Length`.
    pub body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// A GET of `url` without range, headers or body.
    pub fn get(url: &'a Url) -> Self {
        Self {
            method: "GET",
            url,
            range: None,
            headers: &[],
            headers_for: None,
            body: None,
        }
    }
}

/// The per-core client: a pool of keep-alive connections and the TLS connectors.
pub struct Client {
    tls: monoio_rustls::TlsConnector,
    /// For TLS through the proxy's tunnels, which may also trust the proxy's CA.
    proxied_tls: monoio_rustls::TlsConnector,
    timeouts: Timeouts,
    proxy: Option<Arc<ProxyConfig>>,
    idle: RefCell<HashMap<Endpoint, Vec<Conn>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
enum BodyKind {
    Length(u64),
    Chunked { left_in_chunk: u64, done: bool },
    UntilClose { done: bool },
}

/// A response whose head has been read; the body is read with [`Response::read_body`].
pub struct Response {
    pub head: ResponseHead,
    /// The URL that answered (after redirects).
    pub url: Url,
    conn: Conn,
    body: BodyKind,
    stall: Duration,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("head", &self.head)
            .field("url", &crate::redact(&self.url))
            .finish()
    }
}

impl Client {
    pub fn new(
        trust: impl Into<tls::Trust>,
        timeouts: Timeouts,
        proxy: Option<Arc<ProxyConfig>>,
    ) -> Self {
        let trust = trust.into();
        Self {
            tls: monoio_rustls::TlsConnector::from(trust.direct),
            proxied_tls: monoio_rustls::TlsConnector::from(trust.proxied),
            timeouts,
            proxy,
            idle: RefCell::new(HashMap::new()),
        }
    }

    /// Sends a request, following redirects, and returns the response of the final hop
    /// whatever its status: interpreting statuses is the caller's business.
    pub async fn send(&self, req: &Request<'_>) -> Result<Response, HttpError> {
        let first = Endpoint::of(req.url)?;
        let home = req.headers_for.unwrap_or(&first);
        let mut url = req.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let endpoint = Endpoint::of(&url)?;
            // Credentials go to the origin they were given for, never to a redirect target
            // elsewhere, not even another port of the same host.
            let headers = if &endpoint == home { req.headers } else { &[] };
            let resp = self.send_once(req, &url, &endpoint, headers).await?;
            if resp.head.status == 407 {
                return Err(HttpError::Proxy(format!(
                    "the proxy for {} requires authentication (HTTP 407): put user:password in the proxy URL",
                    crate::redact(&url)
                )));
            }
            // A request with a body (a token exchange) is never replayed elsewhere: its
            // body holds secrets.
            if !matches!(resp.head.status, 301 | 302 | 303 | 307 | 308) || req.body.is_some() {
                return Ok(resp);
            }
            let location = resp.head.location.clone().ok_or_else(|| {
                HttpError::Redirect(format!(
                    "HTTP {} from {} without a Location",
                    resp.head.status,
                    crate::redact(&url)
                ))
            })?;
            let next = url.join(&location).map_err(|e| {
                HttpError::Redirect(format!("bad Location from {}: {e}", crate::redact(&url)))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(HttpError::Redirect(format!(
                    "{} redirects to a `{}:` URL; only http and https are followed",
                    crate::redact(&url),
                    next.scheme()
                )));
            }
            if url.scheme() == "https" && next.scheme() == "http" {
                return Err(HttpError::Redirect(format!(
                    "{} redirects from https to plain http",
                    crate::redact(&url)
                )));
            }
            resp.discard(self).await;
            url = next;
        }
        Err(HttpError::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects starting at {}",
            crate::redact(req.url)
        )))
    }

    async fn send_once(
        &self,
        req: &Request<'_>,
        url: &Url,
        endpoint: &Endpoint,
        headers: &[(String, String)],
    ) -> Result<Response, HttpError> {
        let method = req.method;
        let proxy = self.proxy.as_deref().and_then(|p| p.route(endpoint));
        let forward = proxy.filter(|_| !endpoint.tls);
        let request = encode_request(
            &Head {
                method,
                url,
                endpoint,
                range: req.range,
                headers,
                forward,
            },
            req.body,
        );
        // A pooled connection may have been closed by the server while idle; that failure is
        // not the request's fault, so it gets one more try on a fresh connection.
        if let Some(mut conn) = self.take_idle(endpoint)
            && conn.send(request.clone()).await.is_ok()
        {
            match conn.read_head(self.timeouts.stall).await {
                Ok(head) => return Ok(self.response(method, url, conn, head)),
                Err(HttpError::Closed { .. } | HttpError::Io { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let tls = if proxy.is_some() {
            &self.proxied_tls
        } else {
            &self.tls
        };
        let mut conn = Conn::connect(endpoint, tls, self.timeouts.connect, proxy).await?;
        conn.send(request).await?;
        let head = conn.read_head(self.timeouts.stall).await?;
        Ok(self.response(method, url, conn, head))
    }

    fn response(&self, method: &str, url: &Url, conn: Conn, head: ResponseHead) -> Response {
        let no_body =
            method == "HEAD" || head.status == 204 || head.status == 304 || head.status < 200;
        let body = if no_body {
            BodyKind::Length(0)
        } else if head.chunked {
            BodyKind::Chunked {
                left_in_chunk: 0,
                done: false,
            }
        } else if let Some(n) = head.content_length {
            BodyKind::Length(n)
        } else {
            BodyKind::UntilClose { done: false }
        };
        Response {
            head,
            url: url.clone(),
            conn,
            body,
            stall: self.timeouts.stall,
        }
    }

    fn take_idle(&self, endpoint: &Endpoint) -> Option<Conn> {
        self.idle.borrow_mut().get_mut(endpoint).and_then(Vec::pop)
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.endpoint.clone()).or_default();
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    }

    /// Idle connections held by this core's pool.
    pub fn idle_connections(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

/// What goes into one request head.
struct Head<'a> {
    method: &'a str,
    url: &'a Url,
    endpoint: &'a Endpoint,
    range: Option<(u64, u64)>,
    headers: &'a [(String, String)],
    /// A plain-http request through this proxy: absolute-form target and its credentials.
    forward: Option<&'a ProxyServer>,
}

fn encode_request(h: &Head<'_>, body: Option<&[u8]>) -> Vec<u8> {
    use std::fmt::Write as _;
    let Head {
        method,
        url,
        endpoint,
        range,
        headers,
        forward,
    } = *h;
    let mut target = String::new();
    if forward.is_some() {
        let _ = write!(target, "http://{}", endpoint.authority());
    }
    target.push_str(url.path());
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: modelpull/{}\r\nAccept: */*\r\nAccept-Encoding: identity\r\n",
        endpoint.authority(),
        env!("CARGO_PKG_VERSION")
    );
    if let Some((first, last)) = range {
        let _ = write!(req, "Range: bytes={first}-{last}\r\n");
    }
    if let Some(auth) = forward.and_then(|p| p.authorization.as_deref()) {
        let _ = write!(req, "Proxy-Authorization: {auth}\r\n");
    }
    for (name, value) in headers {
        if !value.contains(['\r', '\n']) && !name.contains(['\r', '\n', ':']) {
            let _ = write!(req, "{name}: {value}\r\n");
        }
    }
    if let Some(body) = body {
        let _ = write!(req, "Content-Length: {}\r\n", body.len());
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// Turns a non-success status into an error that carries `Retry-After`.
    pub fn error_for_status(&self) -> HttpError {
        HttpError::Status {
            status: self.head.status,
            url: crate::redact(&self.url),
            retry_after: self
                .head
                .retry_after
                .as_deref()
                .and_then(|v| head::retry_after(v, SystemTime::now())),
        }
    }

    /// Body bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.body {
            BodyKind::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Appends up to `max` body bytes to `buf`. `Ok(0)` means the body is complete.
    pub async fn read_body(
        &mut self,
        buf: AlignedBuf,
        max: usize,
    ) -> (Result<usize, HttpError>, AlignedBuf) {
        let want = loop {
            match self.body {
                BodyKind::Length(0)
                | BodyKind::Chunked { done: true, .. }
                | BodyKind::UntilClose { done: true } => return (Ok(0), buf),
                BodyKind::Length(left) => break left.min(max as u64) as usize,
                BodyKind::Chunked {
                    left_in_chunk: 0, ..
                } => match self.next_chunk_size().await {
                    Err(e) => return (Err(e), buf),
                    Ok(size) => {
                        self.body = BodyKind::Chunked {
                            left_in_chunk: size,
                            done: size == 0,
                        }
                    }
                },
                BodyKind::Chunked { left_in_chunk, .. } => {
                    break left_in_chunk.min(max as u64) as usize;
                }
                BodyKind::UntilClose { .. } => break max,
            }
        };
        let (res, buf) = self.conn.read_body(buf, want, self.stall).await;
        let n = match res {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match &mut self.body {
            BodyKind::UntilClose { done } => *done = n == 0,
            _ if n == 0 => {
                let host = self.conn.endpoint.host.clone();
                return (Err(HttpError::Closed { host }), buf);
            }
            BodyKind::Length(left)
            | BodyKind::Chunked {
                left_in_chunk: left,
                ..
            } => *left -= n as u64,
        }
        (Ok(n), buf)
    }

    /// Reads the CRLF ending the previous chunk (if any) and the next chunk-size line; at the
    /// last chunk, reads the trailer section too.
    async fn next_chunk_size(&mut self) -> Result<u64, HttpError> {
        let mut line = self.conn.read_line(self.stall).await?;
        if line.is_empty() {
            line = self.conn.read_line(self.stall).await?;
        }
        let size = head::parse_chunk_size(&line)?;
        if size == 0 {
            for _ in 0..64 {
                if self.conn.read_line(self.stall).await?.is_empty() {
                    return Ok(0);
                }
            }
            return Err(HttpError::Protocol(
                "too many trailer lines in chunked body".into(),
            ));
        }
        Ok(size)
    }

    /// Whether the whole body has been read.
    pub fn body_done(&self) -> bool {
        matches!(
            self.body,
            BodyKind::Length(0) | BodyKind::Chunked { done: true, .. }
        )
    }

    /// Returns the connection to the pool when the body is fully read and the server keeps it
    /// open; otherwise closes it.
    pub fn release(self, client: &Client) {
        if self.body_done() && self.head.keep_alive && !self.conn.has_leftover() {
            client.put_idle(self.conn);
        }
    }

    /// Drops a response the caller does not want (a redirect), reusing the connection when its
    /// body is small.
    pub async fn discard(mut self, client: &Client) {
        if let BodyKind::Length(n) = self.body
            && n <= 64 * 1024
            && self.conn.skip(n, self.stall).await.is_ok()
        {
            self.body = BodyKind::Length(0);
            self.release(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        let url = Url::parse("https://example.com:8443/a%20b/c?x=1&y=2").unwrap();
        let ep = Endpoint::of(&url).unwrap();
        let headers = vec![
            ("Authorization".to_owned(), "Bearer t".to_owned()),
            ("X-Evil".to_owned(), "a\r\nInjected: 1".to_owned()),
        ];
        let head = Head {
            method: "GET",
            url: &url,
            endpoint: &ep,
            range: Some((0, 99)),
            headers: &headers,
            forward: None,
        };
        let req = String::from_utf8(encode_request(&head, None)).unwrap();
        assert!(req.starts_with("GET /a%20b/c?x=1&y=2 HTTP/1.1\r\nHost: example.com:8443\r\n"));
        assert!(req.contains("Range: bytes=0-99\r\n"));
        assert!(req.contains("Authorization: Bearer t\r\n"));
        assert!(!req.contains("Injected"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn proxied_request_with_body() {
        let url = Url::parse("http://origin.example/token?a=1").unwrap();
        let ep = Endpoint::of(&url).unwrap();
        let proxy = ProxyServer::parse("http://u:p@proxy:3128").unwrap();
        let head = Head {
            method: "POST",
            url: &url,
            endpoint: &ep,
            range: None,
            headers: &[],
            forward: Some(&proxy),
        };
        let req = String::from_utf8(encode_request(&head, Some(b"x=1"))).unwrap();
        assert!(req.starts_with("POST http://origin.example/token?a=1 HTTP/1.1\r\n"));
        assert!(req.contains("Proxy-Authorization: Basic dTpw\r\n"));
        assert!(req.ends_with("Content-Length: 3\r\n\r\nx=1"));
    }

    #[test]
    fn endpoints() {
        let ep = Endpoint::of(&Url::parse("http://[::1]:80/x").unwrap()).unwrap();
        assert_eq!(ep.authority(), "[::1]");
        assert!(matches!(
            Endpoint::of(&Url::parse("ftp://h/x").unwrap()),
            Err(HttpError::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn retryable_statuses() {
        let status = |s| HttpError::Status {
            status: s,
            url: String::new(),
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!status(403).is_retryable());
    }
}
