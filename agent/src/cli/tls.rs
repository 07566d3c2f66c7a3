//! `--tls-min-version` and `--tls-cipher-suites`, checked as KServe's agent checks them
//! (`pkg/tls`, `Resolve`): a version is `VersionTLS12` or `VersionTLS13` (empty: TLS 1.2); the
//! suites are Go's names of the suites `crypto/tls` calls secure (`tls.CipherSuites()`), comma
//! separated, blanks around names and empty names ignored; suites cannot be chosen with TLS 1.3.
//! KServe passes the result to servers that never serve TLS (its metrics server is plain HTTP,
//! its webhook server never starts), and so does this agent: the flags only have to be right.

use std::fmt;

/// Go's `tls.CipherSuites()` since Go 1.22 (KServe builds with Go 1.25): TLS 1.3's three, then
/// the ECDHE suites of TLS 1.0–1.2. RSA key exchange, 3DES, RC4 and CBC-SHA256 suites are in
/// Go's insecure list, which KServe does not accept.
pub const CIPHER_SUITES: [&str; 13] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The oldest TLS version a server would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// What the two flags ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub min_version: TlsVersion,
    /// Empty: Go's defaults.
    pub cipher_suites: Vec<&'static str>,
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = match self.min_version {
            TlsVersion::Tls12 => "VersionTLS12",
            TlsVersion::Tls13 => "VersionTLS13",
        };
        if self.cipher_suites.is_empty() {
            write!(f, "{version}, Go's default cipher suites")
        } else {
            write!(f, "{version}, {}", self.cipher_suites.join(","))
        }
    }
}

/// Why KServe's agent would refuse the flags (it exits 1, and so does this one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error(
        "unrecognized TLS version {0:?} for --tls-min-version, valid values: VersionTLS12, VersionTLS13 (empty means VersionTLS12)"
    )]
    Version(String),
    #[error(
        "unknown TLS cipher suite(s) for --tls-cipher-suites: {}; valid names (comma separated): {}",
        .0.join(", "),
        CIPHER_SUITES.join(", ")
    )]
    CipherSuites(Vec<String>),
    #[error(
        "--tls-cipher-suites was set but names no suite; name some (comma separated) of: {}",
        CIPHER_SUITES.join(", ")
    )]
    NoCipherSuite,
    #[error(
        "--tls-cipher-suites cannot be used with --tls-min-version=VersionTLS13 (TLS 1.3's suites are not configurable); drop one of them"
    )]
    SuitesWithTls13,
}

/// Checks the flags' values (`""` for a flag not given) as KServe's `Resolve` does.
pub fn resolve(min_version: &str, cipher_suites: &str) -> Result<Tls, TlsError> {
    let min_version = match min_version.trim() {
        "" | "VersionTLS12" => TlsVersion::Tls12,
        "VersionTLS13" => TlsVersion::Tls13,
        _ => return Err(TlsError::Version(min_version.to_owned())),
    };
    let cipher_suites = if cipher_suites.trim().is_empty() {
        Vec::new()
    } else {
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for name in cipher_suites
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            match CIPHER_SUITES.iter().find(|s| **s == name) {
                Some(suite) => known.push(*suite),
                None => unknown.push(name.to_owned()),
            }
        }
        if !unknown.is_empty() {
            return Err(TlsError::CipherSuites(unknown));
        }
        if known.is_empty() {
            return Err(TlsError::NoCipherSuite);
        }
        known
    };
    if min_version == TlsVersion::Tls13 && !cipher_suites.is_empty() {
        return Err(TlsError::SuitesWithTls13);
    }
    Ok(Tls {
        min_version,
        cipher_suites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_kserves_two_and_empty_is_tls12() {
        assert_eq!(resolve("", "").unwrap().min_version, TlsVersion::Tls12);
        assert_eq!(
            resolve(" VersionTLS12 ", "").unwrap().min_version,
            TlsVersion::Tls12
        );
        assert_eq!(
            resolve("VersionTLS13", "").unwrap().min_version,
            TlsVersion::Tls13
        );
        for bad in [
            "VersionTLS10",
            "VersionTLS11",
            "1.2",
            "versiontls12",
            "TLS13",
        ] {
            let err = resolve(bad, "").unwrap_err();
            assert_eq!(err, TlsError::Version(bad.into()));
            let message = err.to_string();
            assert!(message.contains(&format!("\"{bad}\"")), "{message}");
            assert!(message.contains("VersionTLS12, VersionTLS13"), "{message}");
        }
    }

    #[test]
    fn suites_are_gos_secure_names_comma_separated() {
        let tls = resolve(
            "",
            " TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 ",
        )
        .unwrap();
        assert_eq!(
            tls.cipher_suites,
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert_eq!(
            tls.to_string(),
            "VersionTLS12, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        );
        // TLS 1.3's names are in Go's list, so KServe accepts them.
        assert!(resolve("", "TLS_AES_128_GCM_SHA256").is_ok());
    }

    #[test]
    fn unknown_and_insecure_suites_are_refused_by_name() {
        let err = resolve(
            "",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_AES_128_GCM_SHA256,ECDHE-RSA-AES128-GCM-SHA256",
        )
        .unwrap_err();
        assert_eq!(
            err,
            TlsError::CipherSuites(vec![
                "TLS_RSA_WITH_AES_128_GCM_SHA256".into(),
                "ECDHE-RSA-AES128-GCM-SHA256".into()
            ])
        );
        let message = err.to_string();
        assert!(
            message.contains("TLS_RSA_WITH_AES_128_GCM_SHA256, ECDHE-RSA-AES128-GCM-SHA256;"),
            "{message}"
        );
        assert!(
            message.contains("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
            "{message}"
        );
    }

    #[test]
    fn a_list_without_names_and_suites_with_tls13_are_refused() {
        assert_eq!(resolve("", " , ,"), Err(TlsError::NoCipherSuite));
        assert_eq!(
            resolve("VersionTLS13", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            Err(TlsError::SuitesWithTls13)
        );
    }
}
