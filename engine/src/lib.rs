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
pub mod disk;
pub mod error;
pub mod metrics;
pub mod pool;
pub mod progress;
pub mod pull;
pub mod report;
pub mod runtime;
pub mod target;

pub use error::{Error, ExitCode, Result};
pub use pull::{Context, Options, PullRequest, pull};
pub use report::Report;
pub use target::Target;
pub mod demo;
pub mod origin;
