//! modelpull: a thread-per-core io_uring download engine for large ML models.
//!
//! [`store::resolve`] turns a model URI (`hf://`, `s3://`, `gs://`, `http(s)://`) into
//! [`Target`]s: URL, size, the digest the store vouches for, credentials. [`pull()`] takes
//! targets and a destination directory and returns a [`Report`] once every file is fetched
//! with parallel ranged requests, written with O_DIRECT, verified against its digest and
//! published atomically. The layers, bottom up:
//!
//! - [`buf`]: page-aligned buffers shared by the socket, the hasher and the disk;
//! - [`http`]: the HTTP/1.1 client (both planes), TLS and forward proxies;
//! - [`digest`]: in-order digests with saved state, combinable CRCs;
//! - [`disk`]: part files, the resume journal, staging and publish;
//! - [`store`]: model stores and their listings (the control plane);
//! - [`pull`]: the scheduler and the per-core workers; [`runtime`] starts the cores;
//! - [`archive`]: safe unpacking of a model shipped as one archive;
//! - [`metrics`], [`progress`], [`report`], [`units`]: what a pull tells its caller.
//!
//! The CLI (`engine/cli`), the HTTP origin the demo serves from (`engine/origin`) and the test
//! fixtures (`engine/testkit`) are crates of their own, so a program that links the engine
//! links none of them.

pub mod archive;
pub mod buf;
pub mod digest;
pub mod http;

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
pub mod disk;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metrics;
pub mod pool;
pub mod progress;
pub mod pull;
pub mod report;
pub mod runtime;
pub mod store;
pub mod target;
pub mod units;

pub use error::{Error, ExitCode, Result};
pub use pull::{Context, Options, PullRequest, pull};
pub use report::Report;
pub use target::Target;
