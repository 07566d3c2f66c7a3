//! The agent's two ports, as KServe's agent has them (reference §1): `/metrics` on 8080
//! (Prometheus text: the engine's `modelpull_*` counters and the agent's own), and on 8081
//! `/healthz` (the process is alive) and `/readyz` (connected to the API server, watching its
//! LocalModelNode) — which KServe's agent leaves answering 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

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
}

/// Serves `/metrics` from `registry` on `addr` until the process ends.
pub async fn metrics(addr: SocketAddr, registry: Registry) -> std::io::Result<()> {
    serve(addr, move |path| match path {
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

/// Serves `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn probes(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    serve(addr, move |path| match path {
        "/healthz" => (StatusCode::OK, "text/plain".into(), b"ok\n".to_vec()),
        "/readyz" if !health.models_root_writable.load(Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain".into(),
            b"the models root is not writable: see the agent's log\n".to_vec(),
        ),
        "/readyz" if health.ready.load(Relaxed) => {
            (StatusCode::OK, "text/plain".into(), b"ok\n".to_vec())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain".into(),
            b"not connected to the Kubernetes API server\n".to_vec(),
        ),
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

async fn serve<F>(addr: SocketAddr, answer: F) -> std::io::Result<()>
where
    F: Fn(&str) -> (StatusCode, String, Vec<u8>) + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
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
