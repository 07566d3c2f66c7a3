//! The control plane: listings, metadata and token requests.
//!
//! These are small requests made before any file byte moves. They use the engine's own HTTP
//! client (same TLS roots, same proxies, same redirect rules) on a runtime of their own on
//! the calling thread, and read whole bodies into memory with a size bound.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use url::Url;

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::http::head::ResponseHead;
use crate::http::proxy::ProxyConfig;
use crate::http::tls::CaBundle;
use crate::http::{Client, ClientConfig, HttpError, Request, Timeouts, tls};
use crate::runtime::{self, Driver};

/// Largest control-plane body accepted (a listing page is far smaller).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Attempts for a control-plane request that failed in a retryable way.
const ATTEMPTS: u32 = 4;

/// Settings for control-plane requests, taken from the pull's options.
#[derive(Debug, Clone)]
pub struct Control {
    trust: tls::Trust,
    ca_bundle: Option<CaBundle>,
    insecure_hosts: Vec<String>,
    timeouts: Timeouts,
    proxy: Option<Arc<ProxyConfig>>,
    driver: Driver,
    cancel: Option<Arc<AtomicBool>>,
}

/// A whole response. Debug output leaves the body out: it may hold a token.
pub struct Reply {
    pub head: ResponseHead,
    pub url: Url,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.head.status)
            .field("url", &crate::redact(&self.url))
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as text for error messages, cut to a readable length.
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text.to_owned(),
        }
    }
}

impl Control {
    /// Control-plane settings from `config`; fails on an unreadable CA bundle or a driver that cannot start.
    pub fn new(config: &ClientConfig) -> Result<Self> {
        let trust = tls::trust(
            config.ca_bundle.as_ref(),
            &config.insecure_hosts,
            config.proxy.as_deref(),
        )
        .map_err(|e| Error::InvalidOption(e.to_string()))?;
        let (driver, _) = runtime::resolve(config.driver)?;
        Ok(Self {
            trust,
            ca_bundle: config.ca_bundle.clone(),
            insecure_hosts: config.insecure_hosts.clone(),
            timeouts: config.timeouts,
            proxy: config.proxy.clone(),
            driver,
            cancel: None,
        })
    }

    /// The same settings with a store's own TLS needs added: an extra CA bundle
    /// (`AWS_CA_BUNDLE`) and hosts whose certificates are not verified (`S3_VERIFY_SSL=0`).
    pub fn with_tls(
        &self,
        ca_bundle: Option<&CaBundle>,
        insecure_hosts: &[String],
    ) -> Result<Self> {
        let ca_bundle = self.ca_bundle.as_ref().or(ca_bundle).cloned();
        let mut insecure = self.insecure_hosts.clone();
        insecure.extend(insecure_hosts.iter().cloned());
        let trust = tls::trust(ca_bundle.as_ref(), &insecure, self.proxy.as_deref())
            .map_err(|e| Error::InvalidOption(e.to_string()))?;
        Ok(Self {
            trust,
            ca_bundle,
            insecure_hosts: insecure,
            ..self.clone()
        })
    }

    /// The same settings without a proxy (for link-local services such as a cloud's metadata
    /// server, which must never be reached through one).
    pub fn direct(&self) -> Self {
        Self {
            proxy: None,
            ..self.clone()
        }
    }

    /// The same settings with other connect and stall timeouts (a credential provider's,
    /// which must fail fast where the pull's may wait).
    pub fn with_timeouts(&self, timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            ..self.clone()
        }
    }

    /// Runs `f` with a client on a runtime of its own on this thread.
    pub fn run<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Rc<Client>) -> Fut,
        Fut: Future<Output = T>,
    {
        let client = Rc::new(Client::new(
            self.trust.clone(),
            self.timeouts,
            self.proxy.clone(),
        ));
        let work = f(client);
        let Some(cancel) = self.cancel.clone() else {
            return runtime::block_on(self.driver, work);
        };
        // A listing of a big bucket takes a while: Ctrl-C (or the agent cancelling a model)
        // stops it within 50 ms instead of at the end.
        runtime::block_on(self.driver, async move {
            let cancelled = async {
                while !cancel.load(Relaxed) {
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            monoio::select! {
                out = work => Ok(out),
                () = cancelled => Err(Error::Interrupted),
            }
        })?
    }

    /// The same settings, stopping any request under way once `cancel` is set.
    pub fn with_cancel(&self, cancel: Arc<AtomicBool>) -> Self {
        Self {
            cancel: Some(cancel),
            ..self.clone()
        }
    }
}

/// GETs `url` with the headers `auth` gives for it and returns the whole reply, whatever its
/// status (the store interprets it). Failures name `uri`; `reaching` says what was being
/// reached ("the Hub", "the storage API").
pub async fn get_authorized(
    client: &Client,
    uri: &str,
    url: &Url,
    auth: &crate::target::Auth,
    reaching: &str,
) -> Result<Reply> {
    let headers = auth.headers("GET", url).map_err(|message| Error::Auth {
        uri: uri.to_owned(),
        message,
    })?;
    let req = Request {
        headers: &headers,
        ..Request::get(url)
    };
    fetch(client, &req).await.map_err(|e| Error::Store {
        uri: uri.to_owned(),
        message: format!("cannot reach {reaching}: {e}"),
    })
}

/// Sends `req` and reads the whole body; retryable failures (resets, 5xx, 429) are tried
/// again with a short pause.
pub async fn fetch(client: &Client, req: &Request<'_>) -> Result<Reply, HttpError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match fetch_once(client, req).await {
            Ok(reply)
                if attempt < ATTEMPTS && matches!(reply.status(), 429 | 500 | 502 | 503 | 504) =>
            {
                tracing::debug!(status = reply.status(), url = %crate::redact(&reply.url), "retrying");
                None
            }
            Ok(reply) => return Ok(reply),
            Err(e) if attempt < ATTEMPTS && e.is_retryable() => Some(e),
            Err(e) => return Err(e),
        };
        if let Some(e) = err {
            tracing::debug!(error = %e, "retrying a control-plane request");
        }
        monoio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
    }
}

async fn fetch_once(client: &Client, req: &Request<'_>) -> Result<Reply, HttpError> {
    let mut resp = client.send(req).await?;
    let mut body = Vec::new();
    let mut buf = AlignedBuf::new(64 * 1024);
    loop {
        buf.set_len(0);
        let cap = buf.capacity();
        let (res, b) = resp.read_body(buf, cap).await;
        buf = b;
        match res? {
            0 => break,
            n => body.extend_from_slice(&buf.as_slice()[..n]),
        }
        if body.len() > MAX_BODY {
            return Err(HttpError::Protocol(format!(
                "{} sent a body larger than {} MiB",
                crate::redact(&resp.url),
                MAX_BODY >> 20
            )));
        }
    }
    let head = resp.head.clone();
    let url = resp.url.clone();
    resp.release(client);
    Ok(Reply { head, url, body })
}

/// Runs `work(item)` for every item with at most `width` in flight on this runtime, and
/// returns the results in input order. After an error no new item starts; the error of the
/// lowest-numbered failed item is returned.
pub async fn for_each<I, T, F, Fut>(items: Vec<I>, width: usize, work: F) -> Result<Vec<T>>
where
    I: 'static,
    T: 'static,
    F: Fn(I) -> Fut + 'static,
    Fut: Future<Output = Result<T>> + 'static,
{
    let total = items.len();
    let queue: Rc<RefCell<VecDeque<(usize, I)>>> =
        Rc::new(RefCell::new(items.into_iter().enumerate().collect()));
    let results: Rc<RefCell<Vec<Option<Result<T>>>>> =
        Rc::new(RefCell::new((0..total).map(|_| None).collect()));
    let work = Rc::new(work);
    let tasks: Vec<_> = (0..width.clamp(1, total.max(1)))
        .map(|_| {
            let (queue, results, work) = (queue.clone(), results.clone(), work.clone());
            monoio::spawn(async move {
                loop {
                    let next = queue.borrow_mut().pop_front();
                    let Some((i, item)) = next else { break };
                    let r = work(item).await;
                    let failed = r.is_err();
                    results.borrow_mut()[i] = Some(r);
                    if failed {
                        queue.borrow_mut().clear();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let results = Rc::try_unwrap(results)
        .map_err(|_| Error::Runtime("control-plane tasks still running".into()))?
        .into_inner();
    let mut out = Vec::with_capacity(total);
    for r in results.into_iter().flatten() {
        out.push(r?);
    }
    if out.len() != total {
        return Err(Error::Runtime("a control-plane task did not finish".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_listing_stops_at_once() {
        // A server that accepts and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/list", listener.local_addr().unwrap())).unwrap();
        let held = std::thread::spawn(move || listener.accept().map(|(c, _)| c));
        let cancel = Arc::new(AtomicBool::new(false));
        let control = Control::new(&crate::Options::default().client())
            .unwrap()
            .with_cancel(cancel.clone());
        let setter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                cancel.store(true, Relaxed);
            })
        };
        let started = std::time::Instant::now();
        let out = control.run(|client| {
            let url = url.clone();
            async move { fetch(&client, &Request::get(&url)).await.map(|_| ()) }
        });
        assert!(matches!(out, Err(Error::Interrupted)), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the stall timeout is 30 s"
        );
        setter.join().unwrap();
        drop(held);
    }
}
