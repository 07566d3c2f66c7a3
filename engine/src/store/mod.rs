//! Model stores: a source URI in, a manifest of [`Target`]s out.
//!
//! Each scheme lists its files over the control plane ([`control`]) and says, per file, the
//! URL to GET, the size, the digest the store vouches for and the credentials the request
//! needs. The bytes then move through the engine's data plane like any other target. The
//! URIs and environment variables are the ones KServe's storage-initializer accepts, so a
//! `sourceModelUri` that works there works here:
//!
//! | scheme | module | digest |
//! |---|---|---|
//! | `hf://org/model[:rev]` | [`hf`] | LFS: sha256 (`lfs.oid`); others: git blob sha1 |
//! | `s3://bucket/prefix` | [`s3`] | `x-amz-checksum-*`, else single-part ETag md5, else size |
//! | `gs://bucket/prefix` | [`gs`] | crc32c, else md5 |
//! | `http(s)://host/file` | [`http`] | `#sha256=…` fragment when given, else size |
//!
//! Every path in a listing is untrusted: [`crate::target::check_targets`] refuses anything
//! that could escape the destination before a byte is written.

// Private, or `pub` with the `internals` feature, as the crate's layers are (see lib.rs).
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod aws_auth;
#[cfg(not(feature = "internals"))]
mod aws_auth;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod control;
#[cfg(not(feature = "internals"))]
mod control;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod env;
#[cfg(not(feature = "internals"))]
mod env;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod filter;
#[cfg(not(feature = "internals"))]
mod filter;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod gcp_auth;
#[cfg(not(feature = "internals"))]
mod gcp_auth;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod gs;
#[cfg(not(feature = "internals"))]
mod gs;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod hf;
#[cfg(not(feature = "internals"))]
mod hf;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod http;
#[cfg(not(feature = "internals"))]
mod http;
#[cfg(feature = "internals")]
#[allow(missing_docs)]
pub mod s3;
#[cfg(not(feature = "internals"))]
mod s3;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::target::Target;
pub use control::Control;
pub use env::{Env, S3_STORAGE_SPEC};
pub use filter::Patterns;
pub(crate) use hf::Repo as HfRepo;

/// What a source URI holds.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The URI as given (http URLs without query or credentials).
    pub uri: String,
    /// `hf`, `s3`, `gs` or `http`.
    pub store: &'static str,
    /// The exact revision listed, when the store has revisions (an HF commit).
    pub revision: Option<String>,
    /// Every file the URI names, after the filters.
    pub files: Vec<Target>,
    /// Files left out by the [`Patterns`] or skipped as folder markers.
    pub skipped: usize,
    /// TLS settings the store's environment asks for, to apply to the pull's options: a CA
    /// bundle (`AWS_CA_BUNDLE`) and hosts not to verify (`S3_VERIFY_SSL=0`).
    pub ca_bundle: Option<crate::CaBundle>,
    /// Hosts whose certificates are not verified, from the store's environment.
    pub insecure_hosts: Vec<String>,
}

/// One manifest line, as `modelpull ls --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Where the file lands, relative to the destination.
    pub path: String,
    /// Its size, when the store lists it.
    pub size: Option<u64>,
    /// What the pull will verify the file against.
    pub checksum: String,
}

impl Manifest {
    /// Sum of the listed sizes; `None` when a size is unknown until the first request.
    pub fn total_size(&self) -> Option<u64> {
        self.files.iter().map(|t| t.size).sum()
    }

    /// One line per file, for `ls`.
    pub fn listing(&self) -> Vec<Listed> {
        self.files
            .iter()
            .map(|t| Listed {
                path: t.path.clone(),
                size: t.size,
                checksum: t.checksum.clone().unwrap_or_else(|| t.checksum_label()),
            })
            .collect()
    }
}

/// Lists `uri`: every file it names, with URL, size, expected digests and credentials.
/// `STORAGE_ALLOW_PATTERNS` / `STORAGE_IGNORE_PATTERNS` from `env` filter the listing: this is
/// [`resolve_filtered`] with [`Patterns::from_env`].
///
/// ```no_run
/// use modelpull::{Control, Env, Options};
///
/// # fn main() -> modelpull::Result<()> {
/// let env = Env::from_process(); // AWS_*, HF_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, proxies…
/// let control = Control::new(&Options::default().client())?;
/// let manifest = modelpull::resolve("s3://models/llama-3-8b", &env, &control)?;
/// for line in manifest.listing() {
///     println!("{} {:?} {}", line.path, line.size, line.checksum);
/// }
/// # Ok(())
/// # }
/// ```
pub fn resolve(uri: &str, env: &Env, control: &Control) -> Result<Manifest> {
    resolve_filtered(uri, env, control, &Patterns::from_env(env))
}

/// [`resolve`] with the caller's `patterns` in place of the environment's: `env` still gives
/// endpoints and credentials, but its `STORAGE_*_PATTERNS` are not read.
///
/// ```no_run
/// use modelpull::{Control, Env, Options, Patterns};
///
/// # fn main() -> modelpull::Result<()> {
/// let env = Env::from_process();
/// let control = Control::new(&Options::default().client())?;
/// let patterns = Patterns {
///     allow: vec!["*.safetensors".into(), "*.json".into()],
///     ignore: vec!["original/".into()],
/// };
/// let manifest = modelpull::store::resolve_filtered("hf://org/model", &env, &control, &patterns)?;
/// # Ok(())
/// # }
/// ```
pub fn resolve_filtered(
    uri: &str,
    env: &Env,
    control: &Control,
    patterns: &Patterns,
) -> Result<Manifest> {
    let scheme = uri.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let mut manifest = match scheme.as_deref() {
        Some("hf") => hf::list(uri, env, control, patterns)?,
        Some("s3") => s3::list(uri, env, control, patterns)?,
        Some("gs") => gs::list(uri, env, control, patterns)?,
        Some("http" | "https") => http::list(uri, env)?,
        other => {
            let what = other.map_or_else(
                || "it has no scheme".to_owned(),
                |s| format!("unsupported scheme `{s}`"),
            );
            return Err(Error::InvalidSource {
                input: crate::redact_str(uri),
                reason: format!("{what}: use hf://, s3://, gs://, http:// or https://"),
            });
        }
    };
    if manifest.files.is_empty() {
        let filtered = if manifest.skipped > 0 {
            format!(
                " ({} listed file(s) were left out by the allow/ignore patterns, or are folder markers or empty objects)",
                manifest.skipped
            )
        } else {
            String::new()
        };
        return Err(Error::Store {
            uri: crate::redact_str(uri),
            message: format!("no model files found{filtered}"),
        });
    }
    manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
    check_listing(uri, &manifest.files)?;
    Ok(manifest)
}

/// Refuses a listing with any unsafe, duplicate or conflicting path, naming the entry.
pub(crate) fn check_listing(uri: &str, targets: &[Target]) -> Result<()> {
    crate::target::check_targets(targets).map_err(|e| match e {
        Error::InvalidSource { reason, .. } => Error::InvalidSource {
            input: crate::redact_str(uri),
            reason: format!("the store's listing is unsafe: {reason}"),
        },
        other => other,
    })
}

/// Pages of a listing followed before it is considered runaway (10 million objects).
pub(crate) const MAX_PAGES: usize = 10_000;

/// Remembers a listing's page tokens: a token seen before, or too many pages, means the
/// server is going round in circles.
#[derive(Debug, Default)]
pub(crate) struct Pages {
    seen: std::collections::HashSet<String>,
}

impl Pages {
    /// Accepts the next token, or says why the listing must stop.
    pub(crate) fn next(&mut self, token: &str) -> std::result::Result<(), String> {
        if self.seen.len() >= MAX_PAGES {
            return Err(format!("the listing has more than {MAX_PAGES} pages"));
        }
        if !self.seen.insert(token.to_owned()) {
            return Err("the listing repeats a page token".into());
        }
        Ok(())
    }
}

/// Refuses a bucket path with `.` or `..` segments: URL handling would resolve them and
/// fetch a different object (or bucket) than the one named.
pub(crate) fn check_object_path(uri: &str, path: &str) -> Result<()> {
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(Error::InvalidSource {
            input: crate::redact_str(uri),
            reason: "the path has a `.` or `..` segment".into(),
        });
    }
    Ok(())
}

/// Base64 (standard alphabet) to bytes, for the digests stores put in headers and JSON.
pub(crate) fn base64_digest(
    algorithm: crate::digest::Algorithm,
    value: &str,
) -> Option<crate::digest::Digest> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    (bytes.len() == algorithm.digest_len()).then_some(crate::digest::Digest {
        algorithm,
        value: bytes,
    })
}

/// Percent-encodes one path segment (or a whole key with `keep_slash`) as stores expect.
pub(crate) fn encode(s: &str, keep_slash: bool) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    const PATH: &AsciiSet = &SEGMENT.remove(b'/');
    utf8_percent_encode(s, if keep_slash { PATH } else { SEGMENT }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn base64_digests_are_checked_for_length() {
        let d = base64_digest(Algorithm::Crc32c, "yZRlqg==").unwrap();
        assert_eq!(d.value, [0xc9, 0x94, 0x65, 0xaa]);
        assert!(base64_digest(Algorithm::Crc32c, "AAAAAAAAAAA=").is_none());
        assert!(base64_digest(Algorithm::Crc32c, "not base64!").is_none());
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a b/c+d", true), "a%20b/c%2Bd");
        assert_eq!(encode("a b/c", false), "a%20b%2Fc");
        assert_eq!(encode("ü~", true), "%C3%BC~");
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let control = Control::new(&crate::Options::default().client()).unwrap();
        for uri in ["pvc://x/y", "ftp://h/f", "/mnt/pvc/x", "oci://r/i"] {
            let err = resolve(uri, &Env::default(), &control).unwrap_err();
            assert!(
                err.to_string()
                    .contains("use hf://, s3://, gs://, http:// or https://"),
                "{err}"
            );
        }
    }
}
