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
pub mod error;
pub mod runtime;
pub mod target;
pub mod disk;
