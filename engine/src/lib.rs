//! modelpull: a thread-per-core io_uring download engine for large ML models.
//!
//! [`resolve`] turns a model URI (`hf://`, `s3://`, `gs://`, `http(s)://`) into a
//! [`Manifest`] of [`Target`]s: URL, size, the digest the store vouches for, credentials;
//! [`resolve_filtered`] does the same with the caller's [`Patterns`] of files to keep.
//! [`pull()`] takes targets and a destination directory and returns a [`Report`] once every
//! file is fetched with parallel ranged requests, written with O_DIRECT, verified against its
//! digest and published atomically, with a [`Marker`] that says what the folder holds.
//! [`HfCache::pull`] puts an `hf://` model into the Hugging Face cache instead, where
//! `huggingface_hub` and `transformers` look for it. A pull with [`PullRequest::adopt`] takes
//! over a folder another tool wrote: the files that match are kept where they lie, only the
//! others are fetched ([`adopt`]).
//!
//! ```no_run
//! use modelpull::{Context, Control, Env, Options, PullRequest};
//!
//! # fn main() -> modelpull::Result<()> {
//! let mut opts = Options::default();
//! let env = Env::from_process();
//! let control = Control::new(&opts.client())?;
//! let manifest = modelpull::resolve("hf://openai-community/gpt2", &env, &control)?;
//! opts.apply_tls(&manifest);
//! let request = PullRequest {
//!     targets: manifest.files,
//!     dest: "/mnt/models/gpt2".into(),
//!     unpack: false,
//!     adopt: false,
//!     sources: vec!["hf://openai-community/gpt2".into()],
//! };
//! let report = modelpull::pull(&request, &opts, &Context::default())?;
//! println!("{} bytes verified and published", report.total_bytes);
//! # Ok(())
//! # }
//! ```
//!
//! The public API is what this page lists; the layers behind it, bottom up (none imports one
//! above it):
//!
//! - `buf`: page-aligned buffers shared by the socket, the hasher and the disk;
//! - `digest`: in-order digests with saved state, combinable CRCs;
//! - [`runtime`]: one pinned monoio runtime per core, on io_uring or epoll; [`limits`]: the
//!   container's cgroup limits, which [`Options::fit`] sizes a pull under;
//! - `http`: the HTTP/1.1 client (both planes), TLS and forward proxies;
//! - `disk`: part files, the resume journal, staging and publish;
//! - [`target`]: one file to fetch and the rules for its path;
//! - [`store`]: model stores and their listings (the control plane);
//! - `archive`: safe unpacking of a model shipped as one archive;
//! - `pull`: the scheduler and the per-core workers;
//! - [`adopt`]: a folder another tool wrote, checked in place and repaired file by file;
//! - [`hf_cache`]: `hf://` models pulled into the Hugging Face cache ([`HfCache`]), laid out
//!   as `huggingface_hub` lays them out;
//! - [`metrics`], [`progress`], [`report`], [`units`]: what a pull tells its caller.
//!
//! The CLI (`engine/cli`), the HTTP origin the demo serves from (`engine/origin`) and the test
//! fixtures (`engine/testkit`) are crates of their own, so a program that links the engine
//! links none of them. The `internals` feature opens the private layers to the fuzz targets
//! and the micro-benchmarks; it is not part of the API.
#![warn(missing_docs)]

// The private layers: `pub` with the `internals` feature (fuzzing, micro-benchmarks), private
// otherwise, so what the API does not name stays free to change. Written out rather than made
// by a macro: `cargo fmt` formats only the modules it sees declared.
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod archive;
#[cfg(not(feature = "internals"))]
mod archive;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod buf;
#[cfg(not(feature = "internals"))]
mod buf;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod digest;
#[cfg(not(feature = "internals"))]
mod digest;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod disk;
#[cfg(not(feature = "internals"))]
mod disk;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod http;
#[cfg(not(feature = "internals"))]
mod http;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod pool;
#[cfg(not(feature = "internals"))]
mod pool;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod pull;
#[cfg(not(feature = "internals"))]
mod pull;

pub mod adopt;
pub mod error;
#[cfg(feature = "internals")]
pub mod fuzzing;
pub mod hf_cache;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod peer;
pub mod progress;
pub mod report;
pub mod runtime;
pub mod store;
pub mod target;
pub mod units;

pub use self::digest::{Algorithm, Digest, DigestError};
pub use disk::staging::{MARKER, Marker};
pub use error::{Error, ExitCode, Result};
pub use hf_cache::HfCache;
pub use http::head::HeadError;
pub use http::proxy::ProxyConfig;
pub use http::tls::CaBundle;
pub use http::{ClientConfig, HttpError};
pub use pool::SharedBuffers;
pub use pull::limits::RateLimiter;
pub use pull::{Context, Options, PROXY_MIN_RANGE, PullRequest, pull};
pub use report::Report;
pub use store::{Control, Env, Manifest, Patterns, resolve, resolve_filtered};
pub use target::Target;

/// A URL as it may appear in logs, errors and reports: without query string, fragment or
/// user info, which is where presigned URLs and some servers carry credentials.
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// [`redact`] for a URL given as text. Text that does not parse loses the same parts: what
/// follows `?` or `#`, and user info before an `@`.
pub fn redact_str(url: &str) -> String {
    if let Ok(u) = url::Url::parse(url) {
        return redact(&u);
    }
    let cut = url.find(['?', '#']).map_or(url, |i| &url[..i]);
    match (cut.find("://"), cut.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://{}", &cut[..s], &cut[at + 1..]),
        (None, Some(at)) => cut[at + 1..].to_owned(),
        _ => cut.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redaction() {
        use super::redact_str;
        assert_eq!(
            redact_str("https://u:p@h.example/x?X-Amz-Signature=s#sha256=00"),
            "https://h.example/x"
        );
        assert_eq!(redact_str("not a url"), "not a url");
        assert_eq!(
            redact_str("http://u:p@bad host/x?sig=1"),
            "http://bad host/x"
        );
        assert_eq!(redact_str("hf://org/model"), "hf://org/model");
    }
}
