//! Parsing of HTTP/1.1 response heads and the headers a ranged download depends on.
//!
//! Everything here reads bytes from a server modelpull does not control, so each parser is
//! total: any input gives a value or a typed error, never a panic (the fuzz targets hold it to
//! that).

use std::time::{Duration, SystemTime};

/// Largest response head accepted; a server sending more is refused rather than buffered.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// What a response head says, reduced to what the engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub content_range: Option<ContentRange>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<String>,
    pub accept_ranges_none: bool,
    /// Every header as received, names in lower case: stores put checksums and error codes
    /// in headers of their own (`x-amz-checksum-*`, `x-error-code`, `link`).
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed `Content-Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/total` (total `None` for `*`).
    Bytes {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// `bytes */total`, sent with 416.
    Unsatisfied { total: u64 },
}

/// Why a response head was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// Not an HTTP/1.x response head (or a status outside 100–599).
    #[error("malformed HTTP response head: {0}")]
    Malformed(String),
    /// The head did not end within its size bound.
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// A header the client relies on does not parse.
    #[error("malformed {name} header: {value:?}")]
    BadHeader {
        /// The header's name.
        name: &'static str,
        /// Its value as received.
        value: String,
    },
}

/// Parses a complete head from `buf`. `Ok(None)` means more bytes are needed; `Ok(Some(n))`
/// gives the head and its length, the body starting at `buf[n..]`.
pub fn parse(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    // httparse takes any three digits; HTTP defines 100 to 599 (RFC 9110 §15).
    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(HeadError::Malformed(format!(
            "status code {status:03} is not between 100 and 599"
        )));
    }
    let mut head = ResponseHead {
        status,
        keep_alive: resp.version == Some(1),
        ..Default::default()
    };
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_owned();
        let name = h.name;
        head.headers
            .push((name.to_ascii_lowercase(), value.clone()));
        if name.eq_ignore_ascii_case("content-length") {
            let len = value.parse::<u64>().map_err(|_| HeadError::BadHeader {
                name: "Content-Length",
                value: value.clone(),
            })?;
            if head.content_length.is_some_and(|prev| prev != len) {
                return Err(HeadError::BadHeader {
                    name: "Content-Length",
                    value,
                });
            }
            head.content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-range") {
            head.content_range = Some(parse_content_range(&value)?);
        } else if name.eq_ignore_ascii_case("etag") {
            head.etag = Some(value);
        } else if name.eq_ignore_ascii_case("last-modified") {
            head.last_modified = Some(value);
        } else if name.eq_ignore_ascii_case("location") {
            head.location = Some(value);
        } else if name.eq_ignore_ascii_case("retry-after") {
            head.retry_after = Some(value);
        } else if name.eq_ignore_ascii_case("accept-ranges") {
            head.accept_ranges_none = value.eq_ignore_ascii_case("none");
        }
    }
    if head.chunked {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
        head.content_length = None;
    }
    Ok(Some((head, n)))
}

/// Parses `bytes a-b/total`, `bytes a-b/*` or `bytes */total`.
pub fn parse_content_range(value: &str) -> Result<ContentRange, HeadError> {
    let bad = || HeadError::BadHeader {
        name: "Content-Range",
        value: value.to_owned(),
    };
    let rest = value.strip_prefix("bytes ").ok_or_else(bad)?.trim();
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let total = match total {
        "*" => None,
        t => Some(t.parse::<u64>().map_err(|_| bad())?),
    };
    if range == "*" {
        return total
            .map(|total| ContentRange::Unsatisfied { total })
            .ok_or_else(bad);
    }
    let (first, last) = range.split_once('-').ok_or_else(bad)?;
    let first = first.parse::<u64>().map_err(|_| bad())?;
    let last = last.parse::<u64>().map_err(|_| bad())?;
    if last < first || total.is_some_and(|t| last >= t) {
        return Err(bad());
    }
    Ok(ContentRange::Bytes { first, last, total })
}

/// Interprets `Retry-After` (delay-seconds or an HTTP-date), relative to `now`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value.trim()).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses one chunk-size line of a chunked body (`1a3f;ext=1`), without its CRLF.
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, HeadError> {
    let bad = || HeadError::BadHeader {
        name: "chunk size",
        value: String::from_utf8_lossy(line).into_owned(),
    };
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).map_err(|_| bad())?.trim();
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad());
    }
    u64::from_str_radix(digits, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_partial_content_head() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/100\r\nETag: \"abc\"\r\n\r\nBODY";
        let (head, n) = parse(raw).unwrap().unwrap();
        assert_eq!(&raw[n..], b"BODY");
        assert_eq!(head.status, 206);
        assert_eq!(head.content_length, Some(10));
        assert!(head.keep_alive);
        assert_eq!(head.etag.as_deref(), Some("\"abc\""));
        assert_eq!(
            head.content_range,
            Some(ContentRange::Bytes {
                first: 0,
                last: 9,
                total: Some(100)
            })
        );
    }

    #[test]
    fn needs_more_bytes_then_refuses_giant_heads() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-"), Ok(None));
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() < MAX_HEAD {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(parse(&big).is_err());
    }

    #[test]
    fn chunked_overrides_length_and_close_is_seen() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n";
        let (head, _) = parse(raw).unwrap().unwrap();
        assert!(head.chunked);
        assert_eq!(head.content_length, None);
        assert!(!head.keep_alive);
        let http10 = b"HTTP/1.0 200 OK\r\n\r\n";
        assert!(!parse(http10).unwrap().unwrap().0.keep_alive);
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(parse(raw).is_err());
    }

    #[test]
    fn status_codes_outside_http_are_refused() {
        // Found by the http_head fuzz target: httparse accepts any three digits.
        for line in ["HTTP/1.1 006 x", "HTTP/1.1 099 x", "HTTP/1.1 600 x"] {
            let head = format!("{line}\r\nContent-Length: 0\r\n\r\n");
            assert!(
                matches!(parse(head.as_bytes()), Err(HeadError::Malformed(_))),
                "{line}"
            );
        }
        assert!(parse(b"HTTP/1.1 599 x\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes */42"),
            Ok(ContentRange::Unsatisfied { total: 42 })
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Ok(ContentRange::Bytes {
                first: 5,
                last: 5,
                total: None
            })
        );
        for bad in [
            "bytes 9-5/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes */*",
            "bytes a-b/c",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a3f"), Ok(0x1a3f));
        assert_eq!(parse_chunk_size(b"0;ext=1"), Ok(0));
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"xyz").is_err());
        assert!(parse_chunk_size(b"ffffffffffffffffff").is_err());
    }
}
