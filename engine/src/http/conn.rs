//! One HTTP/1.1 connection on an engine core: plain TCP or rustls, a small read-ahead buffer
//! for response heads and chunk framing, and body reads that land directly in the caller's
//! aligned buffer.

use std::io;
use std::net::ToSocketAddrs;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

use super::HttpError;
use super::head::{self, ResponseHead};
use super::proxy::ProxyServer;
use crate::buf::AlignedBuf;

/// Where a connection goes: scheme, host and port. Connections are pooled by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn of(url: &url::Url) -> Result<Self, HttpError> {
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(HttpError::UnsupportedScheme(other.to_owned())),
        };
        let host = url
            .host_str()
            .ok_or_else(|| HttpError::InvalidUrl(format!("{} has no host", crate::redact(url))))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }

    /// `host:port` with the port always present, as `CONNECT` needs it.
    pub fn authority_with_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

/// An open connection with its read-ahead buffer.
pub struct Conn {
    stream: Stream,
    pub endpoint: Endpoint,
    rbuf: Vec<u8>,
    rpos: usize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

const RBUF: usize = 16 * 1024;

impl Conn {
    /// Opens a connection, with the TLS handshake when the endpoint needs it.
    /// With a `proxy`, the TCP connection goes to it; an https endpoint is then reached
    /// through a `CONNECT` tunnel and TLS runs end to end with the origin.
    pub async fn connect(
        endpoint: &Endpoint,
        tls: &monoio_rustls::TlsConnector,
        timeout: Duration,
        proxy: Option<&ProxyServer>,
    ) -> Result<Self, HttpError> {
        let hop = proxy.map_or_else(|| endpoint.clone(), ProxyServer::endpoint);
        let mut tcp = monoio::time::timeout(timeout, connect_tcp(&hop))
            .await
            .map_err(|_| HttpError::Timeout {
                what: "connect",
                host: hop.host.clone(),
            })??;
        let Some(proxy) = proxy.filter(|_| endpoint.tls) else {
            return Self::over(tcp, endpoint, tls, timeout).await;
        };
        tcp = monoio::time::timeout(timeout, tunnel(tcp, endpoint, proxy))
            .await
            .map_err(|_| HttpError::Timeout {
                what: "proxy CONNECT",
                host: proxy.shown.clone(),
            })??;
        Self::over(tcp, endpoint, tls, timeout)
            .await
            .map_err(|e| match e {
                HttpError::Tls { host, message } => HttpError::Tls {
                    message: format!(
                        "{message} (through proxy {}: a proxy that intercepts HTTPS, such as Dragonfly's dfdaemon, signs with its own CA; trust it with --proxy-ca-bundle)",
                        proxy.shown
                    ),
                    host,
                },
                other => other,
            })
    }

    async fn over(
        tcp: TcpStream,
        endpoint: &Endpoint,
        tls: &monoio_rustls::TlsConnector,
        timeout: Duration,
    ) -> Result<Self, HttpError> {
        let stream = if endpoint.tls {
            let name = ServerName::try_from(endpoint.host.clone()).map_err(|_| {
                HttpError::InvalidUrl(format!("invalid TLS server name {}", endpoint.host))
            })?;
            let handshake = tls.connect(name, tcp);
            let tls_stream = monoio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| HttpError::Timeout {
                    what: "TLS handshake",
                    host: endpoint.host.clone(),
                })?
                .map_err(|e| HttpError::Tls {
                    host: endpoint.host.clone(),
                    message: tls_message(&e),
                })?;
            Stream::Tls(Box::new(tls_stream))
        } else {
            Stream::Plain(tcp)
        };
        Ok(Self {
            stream,
            endpoint: endpoint.clone(),
            rbuf: Vec::with_capacity(RBUF),
            rpos: 0,
        })
    }

    async fn read_raw<B: IoBufMut>(&mut self, buf: B) -> monoio::BufResult<usize, B> {
        match &mut self.stream {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    /// Sends a request head.
    pub async fn send(&mut self, request: Vec<u8>) -> Result<(), HttpError> {
        let (res, _) = match &mut self.stream {
            Stream::Plain(s) => s.write_all(request).await,
            Stream::Tls(s) => s.write_all(request).await,
        };
        res.map(|_| ()).map_err(|source| self.io_error(source))
    }

    fn io_error(&self, source: io::Error) -> HttpError {
        HttpError::Io {
            host: self.endpoint.host.clone(),
            source,
        }
    }

    fn stall(&self) -> HttpError {
        HttpError::Timeout {
            what: "read (no bytes received)",
            host: self.endpoint.host.clone(),
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Reads more bytes into the read-ahead buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self, stall: Duration) -> Result<usize, HttpError> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(RBUF);
        }
        let buf = std::mem::take(&mut self.rbuf);
        let len = buf.len();
        let cap = buf.capacity();
        let read = monoio::time::timeout(stall, self.read_raw(buf.slice_mut(len..cap))).await;
        let Ok((res, slice)) = read else {
            return Err(self.stall());
        };
        self.rbuf = slice.into_inner();
        res.map_err(|e| self.io_error(e))
    }

    /// Reads a response head.
    pub async fn read_head(&mut self, stall: Duration) -> Result<ResponseHead, HttpError> {
        loop {
            if let Some((head, n)) = head::parse(self.buffered())? {
                self.rpos += n;
                return Ok(head);
            }
            if self.fill(stall).await? == 0 {
                return Err(HttpError::Closed {
                    host: self.endpoint.host.clone(),
                });
            }
        }
    }

    /// Reads one CRLF-terminated line (chunk framing), without the CRLF.
    pub async fn read_line(&mut self, stall: Duration) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(i) = self.buffered().windows(2).position(|w| w == b"\r\n") {
                let line = self.buffered()[..i].to_vec();
                self.rpos += i + 2;
                return Ok(line);
            }
            if self.buffered().len() > 4096 {
                return Err(HttpError::Head(head::HeadError::Malformed(
                    "chunk framing line longer than 4096 bytes".into(),
                )));
            }
            if self.fill(stall).await? == 0 {
                return Err(HttpError::Closed {
                    host: self.endpoint.host.clone(),
                });
            }
        }
    }

    /// Appends up to `max` bytes to `buf` (at `buf.len()`), first from the read-ahead buffer,
    /// otherwise with one read straight into `buf`. Returns the count; 0 means end of stream.
    ///
    /// On a stall the read is cancelled and its buffer goes with it; a fresh buffer of the same
    /// capacity is returned so the caller's bookkeeping stays simple. Stalls are rare.
    pub async fn read_body(
        &mut self,
        mut buf: AlignedBuf,
        max: usize,
        stall: Duration,
    ) -> (Result<usize, HttpError>, AlignedBuf) {
        let start = buf.len();
        let max = max.min(buf.capacity() - start);
        let ahead = self.rbuf.len() - self.rpos;
        if ahead > 0 {
            let n = ahead.min(max);
            buf.full_mut()[start..start + n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
            buf.set_len(start + n);
            self.rpos += n;
            return (Ok(n), buf);
        }
        let cap = buf.capacity();
        match monoio::time::timeout(stall, self.read_raw(buf.slice_mut(start..start + max))).await {
            Ok((res, slice)) => {
                let buf = slice.into_inner();
                (res.map_err(|e| self.io_error(e)), buf)
            }
            Err(_) => (Err(self.stall()), AlignedBuf::new(cap)),
        }
    }

    /// Discards exactly `n` body bytes (a redirect's body, say).
    pub async fn skip(&mut self, mut n: u64, stall: Duration) -> Result<(), HttpError> {
        while n > 0 {
            if self.buffered().is_empty() && self.fill(stall).await? == 0 {
                return Err(HttpError::Closed {
                    host: self.endpoint.host.clone(),
                });
            }
            let take = (self.buffered().len() as u64).min(n) as usize;
            self.rpos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Whether the server sent bytes nobody asked for (the connection is then not reusable).
    pub fn has_leftover(&self) -> bool {
        !self.buffered().is_empty()
    }
}

/// Resolves and connects. Names under `localhost` (RFC 6761) are loopback without asking
/// DNS, as curl does, so virtual-hosted buckets (`bucket.localhost`) work on one machine.
async fn connect_tcp(hop: &Endpoint) -> Result<TcpStream, HttpError> {
    let failed = |source| HttpError::Connect {
        host: hop.host.clone(),
        source,
    };
    let host = hop.host.to_ascii_lowercase();
    let addrs: Vec<_> = if host == "localhost" || host.ends_with(".localhost") {
        vec![std::net::SocketAddr::from(([127, 0, 0, 1], hop.port))]
    } else if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        vec![std::net::SocketAddr::new(ip, hop.port)]
    } else {
        resolve(&hop.host, hop.port).await.map_err(failed)?
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_addr(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

/// Looks a name up on a thread of its own: the system resolver blocks, and an engine core must
/// not stop (nor escape the connect timeout, which bounds this wait).
async fn resolve(host: &str, port: u16) -> io::Result<Vec<std::net::SocketAddr>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect),
            );
        })?;
    loop {
        match rx.try_recv() {
            Ok(result) => return result,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(io::Error::other("the name lookup thread ended"));
            }
        }
    }
}

/// Asks `proxy` for a tunnel to `endpoint` and returns the stream once it answers 2xx.
async fn tunnel(
    tcp: TcpStream,
    endpoint: &Endpoint,
    proxy: &ProxyServer,
) -> Result<TcpStream, HttpError> {
    let authority = endpoint.authority_with_port();
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = &proxy.authorization {
        request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    let mut conn = Conn {
        stream: Stream::Plain(tcp),
        endpoint: proxy.endpoint(),
        rbuf: Vec::with_capacity(RBUF),
        rpos: 0,
    };
    conn.send(request.into_bytes()).await?;
    let head = conn.read_head(Duration::from_secs(60)).await?;
    if !(200..300).contains(&head.status) {
        return Err(HttpError::Proxy(format!(
            "proxy {} refused a tunnel to {authority}: HTTP {}{}",
            proxy.shown,
            head.status,
            if head.status == 407 {
                " (proxy authentication required: put user:password in the proxy URL)"
            } else {
                ""
            }
        )));
    }
    if conn.has_leftover() {
        return Err(HttpError::Proxy(format!(
            "proxy {} sent bytes after its CONNECT answer",
            proxy.shown
        )));
    }
    let Stream::Plain(tcp) = conn.stream else {
        return Err(HttpError::Protocol("a proxy tunnel opened over TLS".into()));
    };
    Ok(tcp)
}

/// The handshake error with its causes (rustls names the certificate problem in a source).
fn tls_message(e: &monoio_rustls::TlsError) -> String {
    let mut msg = match e {
        monoio_rustls::TlsError::Io(io) => io.to_string(),
        monoio_rustls::TlsError::Rustls(r) => r.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        source = s.source();
    }
    msg
}
