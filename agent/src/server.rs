//! The agent's two ports, as KServe's agent has them (reference §1): `/metrics` on 8080
//! (Prometheus text: the engine's `modelpull_*` counters, the agent's own, controller-runtime's
//! families and the process's), and on 8081 `/healthz` (the process is alive) and `/readyz`
//! (connected to the API server, watching its LocalModelNode) — which KServe's agent leaves
//! answering 404.
//!
//! Addresses are bound as Go's `net.Listen("tcp", …)` binds them: a wildcard (`:8080`,
//! `0.0.0.0:8080`, `[::]:8080`) is one IPv6 socket that also takes IPv4 (`IPV6_V6ONLY` off), or
//! an IPv4 one where the node has no IPv6; any other address is bound exactly.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};

/// What the probe endpoints report: ready when both hold.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Connected to the API server and watching (the controller sets it).
    pub ready: Arc<AtomicBool>,
    /// The models root takes new files (see [`crate::root_watch`]).
    pub models_root_writable: Arc<AtomicBool>,
    /// Why the agent can never become ready (e.g. it does not know its node), for `/readyz`.
    blocked: Arc<OnceLock<String>>,
}

impl Health {
    /// Keeps `/readyz` at 503 for good, answering `why`.
    pub fn block(&self, why: impl Into<String>) {
        let _ = self.blocked.set(why.into());
        self.ready.store(false, Relaxed);
    }

    /// `/readyz`'s answer.
    fn readiness(&self) -> (StatusCode, String) {
        if let Some(why) = self.blocked.get() {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
        } else if !self.models_root_writable.load(Relaxed) {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the models root is not writable: see the agent's log\n".into(),
            )
        } else if self.ready.load(Relaxed) {
            (StatusCode::OK, "ok\n".into())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not connected to the Kubernetes API server\n".into(),
            )
        }
    }
}

/// Where a server listens (`--metrics-bind-address`, `--health-probe-bind-address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindAddress {
    /// Every address of the node, IPv6 and IPv4: `:PORT`, `0.0.0.0:PORT`, `[::]:PORT`.
    Wildcard(u16),
    /// That address only.
    Exact(SocketAddr),
}

/// An address that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not an address: write :PORT (every interface) or IP:PORT, e.g. :8080 or 127.0.0.1:8080"
)]
pub struct BadAddress(String);

impl FromStr for BindAddress {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, BadAddress> {
        let bad = || BadAddress(s.to_owned());
        let addr = match s.strip_prefix(':') {
            Some(port) => SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port.parse().map_err(|_| bad())?,
            ),
            None => s.parse().map_err(|_| bad())?,
        };
        Ok(if addr.ip().is_unspecified() {
            Self::Wildcard(addr.port())
        } else {
            Self::Exact(addr)
        })
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wildcard(port) => write!(f, ":{port}"),
            Self::Exact(addr) => write!(f, "{addr}"),
        }
    }
}

/// Listens on `addr` (see the module's doc); the listener is non-blocking, for tokio.
pub fn bind(addr: &BindAddress) -> io::Result<TcpListener> {
    let listener = match *addr {
        BindAddress::Exact(addr) => TcpListener::bind(addr)?,
        BindAddress::Wildcard(port) => match bind_dual_stack(port) {
            Err(e) if no_ipv6(&e) => {
                TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?
            }
            other => other?,
        },
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `[::]:port` taking IPv4 too, with `SO_REUSEADDR` as Go sets it.
fn bind_dual_stack(port: u16) -> io::Result<TcpListener> {
    use rustix::net::{self, AddressFamily, SocketFlags, SocketType, sockopt};
    let fd = net::socket_with(
        AddressFamily::INET6,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_ipv6_v6only(&fd, false)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    net::bind(&fd, &SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))?;
    net::listen(&fd, 1024)?;
    Ok(TcpListener::from(fd))
}

/// Whether binding `[::]` failed because the node has no IPv6 (not built in, or disabled):
/// then Go listens on IPv4 alone, and so do we.
fn no_ipv6(e: &io::Error) -> bool {
    let no_ipv6 = [
        rustix::io::Errno::AFNOSUPPORT,
        rustix::io::Errno::ADDRNOTAVAIL,
    ];
    e.raw_os_error()
        .is_some_and(|code| no_ipv6.iter().any(|n| n.raw_os_error() == code))
}

/// Serves `/metrics` from `registry` on `listener` until the process ends.
pub async fn metrics(listener: TcpListener, registry: Registry) -> io::Result<()> {
    serve(listener, move |path| match path {
        "/metrics" => {
            let mut out = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&registry.gather(), &mut out) {
                Ok(()) => (StatusCode::OK, encoder.format_type().to_owned(), out),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain".into(),
                    e.to_string().into_bytes(),
                ),
            }
        }
        _ => not_found(),
    })
    .await
}

/// Serves `/healthz` and `/readyz` on `listener` until the process ends.
pub async fn probes(listener: TcpListener, health: Health) -> io::Result<()> {
    serve(listener, move |path| match path {
        "/healthz" => (StatusCode::OK, "text/plain".into(), b"ok\n".to_vec()),
        "/readyz" => {
            let (status, body) = health.readiness();
            (status, "text/plain".into(), body.into_bytes())
        }
        _ => not_found(),
    })
    .await
}

fn not_found() -> (StatusCode, String, Vec<u8>) {
    (
        StatusCode::NOT_FOUND,
        "text/plain".into(),
        b"not found\n".to_vec(),
    )
}

async fn serve<F>(listener: TcpListener, answer: F) -> io::Result<()>
where
    F: Fn(&str) -> (StatusCode, String, Vec<u8>) + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, content_type, body) = answer(req.uri().path());
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .body(Full::new(Bytes::from(body)))
                            .expect("a valid response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn addresses_as_go_writes_them() {
        assert_eq!(":8080".parse(), Ok(BindAddress::Wildcard(8080)));
        assert_eq!("0.0.0.0:8081".parse(), Ok(BindAddress::Wildcard(8081)));
        assert_eq!("[::]:9".parse(), Ok(BindAddress::Wildcard(9)));
        assert_eq!(
            "127.0.0.1:0".parse(),
            Ok(BindAddress::Exact("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:80".parse(),
            Ok(BindAddress::Exact("[::1]:80".parse().unwrap()))
        );
        for bad in ["8080", ":http", "localhost:8080", ":", ":70000"] {
            let err = bad.parse::<BindAddress>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        assert_eq!(BindAddress::Wildcard(8080).to_string(), ":8080");
    }

    #[tokio::test]
    async fn a_wildcard_is_reached_over_ipv4_and_ipv6() {
        let listener = bind(&BindAddress::Wildcard(0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(
            listener.local_addr().unwrap().is_ipv6(),
            "one dual-stack socket"
        );
        tokio::spawn(probes(listener, Health::default()));
        for host in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let addr = SocketAddr::new(host, port);
            let reply = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
                .await
                .unwrap();
            assert!(reply.starts_with("HTTP/1.1 200"), "{addr}: {reply}");
        }
    }

    #[test]
    fn an_exact_address_is_bound_exactly() {
        let listener = bind(&BindAddress::Exact("127.0.0.1:0".parse().unwrap())).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener.local_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
        assert!(TcpStream::connect((Ipv6Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn only_a_missing_ipv6_falls_back_to_ipv4() {
        let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
        assert!(no_ipv6(&errno(rustix::io::Errno::AFNOSUPPORT)));
        assert!(no_ipv6(&errno(rustix::io::Errno::ADDRNOTAVAIL)));
        assert!(!no_ipv6(&errno(rustix::io::Errno::ADDRINUSE)));
        assert!(!no_ipv6(&errno(rustix::io::Errno::ACCESS)));
    }

    #[tokio::test]
    async fn readyz_says_why_it_is_not_ready() {
        let health = Health::default();
        let listener = bind(&BindAddress::Exact("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(probes(listener, health.clone()));
        let readyz = move || async move {
            tokio::task::spawn_blocking(move || get(addr, "/readyz"))
                .await
                .unwrap()
        };
        assert!(readyz().await.contains("503 Service Unavailable"));
        assert!(
            readyz()
                .await
                .ends_with("the models root is not writable: see the agent's log\n")
        );
        health.models_root_writable.store(true, Relaxed);
        assert!(
            readyz()
                .await
                .ends_with("not connected to the Kubernetes API server\n")
        );
        health.ready.store(true, Relaxed);
        assert!(readyz().await.starts_with("HTTP/1.1 200"));
        health.block("NODE_NAME is not set");
        let reply = readyz().await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(reply.ends_with("NODE_NAME is not set\n"), "{reply}");
        health.ready.store(true, Relaxed);
        assert!(
            readyz().await.starts_with("HTTP/1.1 503"),
            "blocked for good"
        );
    }
}
