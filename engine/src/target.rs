//! What to pull: a URL, the relative path it lands at, and the digests it must match.
//!
//! Relative paths come from users and, later, from store listings; both are untrusted, so
//! [`check_relative_path`] refuses anything that could leave the destination directory.

use std::sync::Arc;

use url::Url;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// One file to fetch. Debug output shows the URL without query or user info.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Where the file is fetched from (presigned URLs keep their query here only).
    pub url: Url,
    /// Where the file lands, relative to the destination directory (`/`-separated).
    pub path: String,
    /// Digests the file must match (from the caller or the store).
    pub expected: Vec<Digest>,
    /// Size announced by the store's listing, checked against the server's.
    pub size: Option<u64>,
    /// Where `expected` came from (`lfs.oid`, `x-amz-checksum-crc64nvme`, `size only`…),
    /// for the report.
    pub checksum: Option<String>,
    /// Credentials for the source's host; never sent anywhere else.
    pub auth: Auth,
    /// Other servers holding the same file, tried before `url` (see [`crate::mirror`]): they
    /// get no credentials, and the file is still checked against `expected` and `size`.
    pub mirrors: Vec<Url>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &crate::redact(&self.url))
            .field("path", &self.path)
            .field("expected", &self.expected)
            .field("size", &self.size)
            .field("checksum", &self.checksum)
            .field("auth", &self.auth)
            .field(
                "mirrors",
                &self.mirrors.iter().map(crate::redact).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Headers that authorise one request to a store: fixed ones (a bearer token, KServe's
/// `<host>-headers`) or computed per request (a SigV4 signature covers the time).
pub trait Authorize: Send + Sync {
    /// Headers for `method url`; an error names what is missing or broken.
    fn headers(
        &self,
        method: &str,
        url: &Url,
    ) -> std::result::Result<Vec<(String, String)>, String>;
}

/// A fixed header set.
#[derive(Clone)]
pub struct StaticHeaders(pub Vec<(String, String)>);

impl std::fmt::Debug for StaticHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Authorize for StaticHeaders {
    fn headers(&self, _: &str, _: &Url) -> std::result::Result<Vec<(String, String)>, String> {
        Ok(self.0.clone())
    }
}

/// The credentials of a target. Debug output never shows them; equality is identity.
#[derive(Clone, Default)]
pub struct Auth(pub Option<Arc<dyn Authorize>>);

impl Auth {
    /// Credentials that `a` adds to each request.
    pub fn new(a: impl Authorize + 'static) -> Self {
        Self(Some(Arc::new(a)))
    }

    /// The headers for one request (none without credentials).
    pub fn headers(
        &self,
        method: &str,
        url: &Url,
    ) -> std::result::Result<Vec<(String, String)>, String> {
        self.0
            .as_ref()
            .map_or_else(|| Ok(Vec::new()), |a| a.headers(method, url))
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(<redacted>)"
        } else {
            "Auth(none)"
        })
    }
}

impl PartialEq for Auth {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Auth {}

impl Target {
    /// What the file will be verified against, for people: digest names joined with `+`
    /// (`sha256`, `crc32c+md5`), or `size only`.
    pub fn checksum_label(&self) -> String {
        if self.expected.is_empty() {
            return "size only".into();
        }
        self.expected
            .iter()
            .map(|d| d.algorithm.name())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// Parses `URL[#ALGO=HEX[&ALGO=HEX…]]` as given on the command line; the file lands at the
    /// URL's last path segment.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSource {
            input: crate::redact_str(input),
            reason,
        };
        let mut url = Url::parse(input).map_err(|e| invalid(format!("{e}")))?;
        match url.scheme() {
            "http" | "https" => {}
            "hf" | "s3" | "gs" => {
                return Err(invalid(format!(
                    "`{}://` is a model store: list it with modelpull::store::resolve",
                    url.scheme()
                )));
            }
            other => {
                return Err(invalid(format!(
                    "unsupported scheme `{other}` (use http or https)"
                )));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host".into()));
        }
        let mut expected = Vec::new();
        if let Some(fragment) = url.fragment() {
            for pair in fragment.split('&').filter(|p| !p.is_empty()) {
                let d = Digest::parse_pair(pair).map_err(|source| Error::Digest {
                    input: crate::redact_str(input),
                    source,
                })?;
                if expected.iter().any(|e: &Digest| e.algorithm == d.algorithm) {
                    return Err(invalid(format!("{} is given twice", d.algorithm)));
                }
                expected.push(d);
            }
        }
        url.set_fragment(None);
        let segment = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default();
        let name = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| invalid("the file name is not UTF-8".into()))?
            .into_owned();
        if name.is_empty() {
            return Err(invalid("the URL names no file (it ends with `/`)".into()));
        }
        if name.contains('/') {
            return Err(invalid("the file name contains an encoded `/`".into()));
        }
        check_relative_path(&name).map_err(|reason| invalid(format!("file name {reason}")))?;
        Ok(Self {
            url,
            path: name,
            expected,
            size: None,
            checksum: None,
            auth: Auth::default(),
            mirrors: Vec::new(),
        })
    }

    /// Whether the file's expected digests include a cryptographic one (sha256, sha1, md5):
    /// only then may bytes from a mirror be taken, since a size or a CRC can be matched by
    /// bytes chosen to match it.
    pub fn vouched(&self) -> bool {
        self.expected.iter().any(|d| d.algorithm.is_ordered())
    }

    /// Adds a mirror for each base URL: the file is also at `BASE/path`
    /// ([`crate::mirror::url_of`]).
    pub fn add_mirrors(&mut self, bases: &[Url]) {
        let path = self.path.clone();
        self.mirrors
            .extend(bases.iter().map(|b| crate::mirror::url_of(b, &path)));
    }
}

/// A target's mirrors: few enough to track, http(s), and no credentials in their URLs.
fn check_mirrors(t: &Target) -> Result<()> {
    if t.mirrors.len() > crate::mirror::MAX_MIRRORS {
        return Err(Error::InvalidOption(format!(
            "`{}` has {} mirrors; at most {} are supported",
            t.path,
            t.mirrors.len(),
            crate::mirror::MAX_MIRRORS
        )));
    }
    for m in &t.mirrors {
        crate::mirror::parse_base(m.as_str())?;
    }
    Ok(())
}

/// Checks a set of targets before anything is written: every path safe, no two at the same
/// path, none colliding with a temporary file of another, no path both a file and a folder.
/// Errors name the offending entry.
pub fn check_targets(targets: &[Target]) -> Result<()> {
    let mut paths = std::collections::BTreeSet::new();
    for t in targets {
        crate::target::check_relative_path(&t.path).map_err(|reason| Error::InvalidSource {
            input: crate::redact(&t.url),
            reason: format!("path {reason}"),
        })?;
        let marker = crate::disk::staging::MARKER;
        if t.path == marker || t.path.strip_prefix(marker) == Some(".tmp") {
            return Err(Error::InvalidSource {
                input: crate::redact(&t.url),
                reason: format!("path `{}` is reserved for the completion marker", t.path),
            });
        }
        if !paths.insert(t.path.as_str()) {
            return Err(Error::InvalidSource {
                input: crate::redact(&t.url),
                reason: format!("two sources land at the same path `{}`", t.path),
            });
        }
    }
    for t in targets {
        check_mirrors(t)?;
        for suffix in [crate::disk::part::SUFFIX, crate::disk::journal::SUFFIX] {
            if let Some(base) = t.path.strip_suffix(suffix)
                && paths.contains(base)
            {
                return Err(Error::InvalidSource {
                    input: crate::redact(&t.url),
                    reason: format!(
                        "path `{}` collides with the temporary file of `{base}`",
                        t.path
                    ),
                });
            }
        }
        let mut prefix = String::new();
        for segment in t.path.split('/') {
            if !prefix.is_empty() && paths.contains(prefix.as_str()) {
                return Err(Error::InvalidSource {
                    input: crate::redact(&t.url),
                    reason: format!("`{prefix}` is both a file and a directory"),
                });
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(segment);
        }
    }
    Ok(())
}

/// Checks a relative path from an untrusted source: `/`-separated, no empty, `.` or `..`
/// segments, no absolute path, backslash, NUL or control character, at most 4096 bytes with
/// segments of at most 255. The error text completes "path `p` …".
pub fn check_relative_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("is empty".into());
    }
    if path.len() > 4096 {
        return Err("is longer than 4096 bytes".into());
    }
    if path.starts_with('/') {
        return Err(format!("`{path}` is absolute"));
    }
    if path.contains('\\') {
        return Err(format!("`{}` contains a backslash", path.escape_debug()));
    }
    if path.chars().any(char::is_control) {
        return Err(format!(
            "`{}` contains a control character",
            path.escape_debug()
        ));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(format!("`{path}` has an empty segment")),
            "." | ".." => return Err(format!("`{path}` has a `{segment}` segment")),
            s if s.len() > 255 => {
                return Err(format!("`{path}` has a segment longer than 255 bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn parses_url_with_digests() {
        let sha = "0f".repeat(32);
        let t = Target::parse(&format!(
            "https://h.example/m/model%20a.bin?x=1#sha256={sha}&crc32c=01020304"
        ))
        .unwrap();
        assert_eq!(t.path, "model a.bin");
        assert_eq!(t.url.as_str(), "https://h.example/m/model%20a.bin?x=1");
        assert_eq!(t.expected.len(), 2);
        assert_eq!(t.expected[1].algorithm, Algorithm::Crc32c);
    }

    #[test]
    fn refuses_bad_sources() {
        for bad in [
            "not a url",
            "ftp://h/x",
            "s3://bucket/key",
            "http://h/",
            "http://h/%2e%2e",
            "http://h/a%2Fb",
            "http://h/x#sha256=abc",
            "http://h/x#sha256=00&sha256=00",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Target::parse("http://h/x#sha256=abc"),
            Err(Error::Digest { .. })
        ));
    }

    #[test]
    fn relative_paths() {
        assert!(check_relative_path("a/b/c.safetensors").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "./a",
            "a//b",
            "a\\b",
            "a\u{0}b",
            "..",
            "a/",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative_path(&"x".repeat(256)).is_err());
    }
}
