//! Forward proxies, configured as curl and the Python stores configure them.
//!
//! Clusters reach model hubs through corporate proxies, and P2P layers (Dragonfly's dfdaemon)
//! sit in the same place, so both planes honour `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
//! `NO_PROXY` (lower-case names first). Plain-http requests go to the proxy in absolute form;
//! https requests open a `CONNECT` tunnel and do TLS with the origin through it, so the proxy
//! never sees the bytes — unless it intercepts HTTPS, as dfdaemon does: then its CA is given
//! as [`ProxyConfig::ca_bundle`] and trusted on tunnelled connections only. Credentials in a
//! proxy URL become `Proxy-Authorization` and never appear in logs: proxies are shown through
//! [`crate::redact`].

use std::net::IpAddr;

use base64::Engine as _;
use url::Url;

use super::conn::Endpoint;
use super::tls::CaBundle;

/// One proxy server.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyServer {
    pub host: String,
    pub port: u16,
    /// `Basic …` from the URL's user info.
    pub authorization: Option<String>,
    /// The URL as logs may show it.
    pub shown: String,
}

impl std::fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyServer")
            .field("proxy", &self.shown)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ProxyServer {
    /// Parses a proxy URL (`http://[user:pass@]host[:port]`; a bare `host:port` means http).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let with_scheme = if value.contains("://") {
            value.to_owned()
        } else {
            format!("http://{value}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| {
            format!(
                "proxy `{}` is not a URL: {e}",
                crate::redact_str(&with_scheme)
            )
        })?;
        let shown = crate::redact(&url);
        if url.scheme() != "http" {
            return Err(format!(
                "proxy {shown}: only http:// proxies are supported (https targets still use TLS end to end through CONNECT)"
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("proxy {shown} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authorization = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let pair = format!(
                "{}:{}",
                decode(url.username()),
                decode(url.password().unwrap_or(""))
            );
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self {
            host,
            // As Python's clients: a proxy URL without a port means port 80.
            port: url.port_or_known_default().unwrap_or(80),
            authorization,
            shown,
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            tls: false,
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// Which proxy each request uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy for `http://` URLs (`HTTP_PROXY`).
    pub http: Option<ProxyServer>,
    /// Proxy for `https://` URLs (`HTTPS_PROXY`).
    pub https: Option<ProxyServer>,
    /// Hosts and domains reached directly (`NO_PROXY`).
    pub no_proxy: Vec<String>,
    /// The CA of a proxy that intercepts HTTPS (`--proxy-ca-bundle`): trusted for TLS through
    /// the `https` proxy's tunnels, never on a direct connection.
    pub ca_bundle: Option<CaBundle>,
}

impl ProxyConfig {
    /// Reads the proxy variables through `get` (the process environment, or the agent's
    /// per-model environment). Lower-case names win, as in curl.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| get(n).filter(|v| !v.trim().is_empty()))
        };
        let all = var(&["all_proxy", "ALL_PROXY"]);
        let http = var(&["http_proxy", "HTTP_PROXY"]).or_else(|| all.clone());
        let https = var(&["https_proxy", "HTTPS_PROXY"]).or(all);
        if http.is_none() && https.is_none() {
            return Ok(None);
        }
        let no_proxy = var(&["no_proxy", "NO_PROXY"])
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Self {
            http: http.as_deref().map(ProxyServer::parse).transpose()?,
            https: https.as_deref().map(ProxyServer::parse).transpose()?,
            no_proxy,
            ca_bundle: None,
        }))
    }

    /// The proxy for a request to `endpoint`, if any.
    pub fn route(&self, endpoint: &Endpoint) -> Option<&ProxyServer> {
        let server = if endpoint.tls {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        if self
            .no_proxy
            .iter()
            .any(|rule| bypasses(rule, &endpoint.host, endpoint.port))
        {
            return None;
        }
        Some(server)
    }
}

/// Whether one `NO_PROXY` entry covers `host:port`: `*`; a domain, which covers its
/// subdomains (a leading `.` is allowed); an IP address; a CIDR block; each optionally with
/// `:port`.
fn bypasses(rule: &str, host: &str, port: u16) -> bool {
    if rule == "*" {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.to_ascii_lowercase();
    let (pattern, rule_port) = split_port(rule);
    if rule_port.is_some_and(|p| p != port) {
        return false;
    }
    if let Some((net, bits)) = pattern.split_once('/') {
        let (Ok(net), Ok(bits), Ok(ip)) = (
            net.parse::<IpAddr>(),
            bits.parse::<u32>(),
            host.parse::<IpAddr>(),
        ) else {
            return false;
        };
        return in_block(ip, net, bits);
    }
    let domain = pattern.trim_start_matches("*.").trim_start_matches('.');
    host == domain
        || host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

fn split_port(rule: &str) -> (&str, Option<u16>) {
    if let Some(inner) = rule.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, rest)) = inner.split_once(']') {
            return (addr, rest.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match rule.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (rule, None),
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(tls: bool, host: &str, port: u16) -> Endpoint {
        Endpoint {
            tls,
            host: host.into(),
            port,
        }
    }

    fn config(vars: &[(&str, &str)]) -> ProxyConfig {
        ProxyConfig::from_env(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn env_names_and_precedence() {
        let c = config(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "lower:2"),
            ("ALL_PROXY", "all:3"),
        ]);
        assert_eq!(c.https.as_ref().unwrap().host, "lower");
        assert_eq!(c.https.as_ref().unwrap().port, 2);
        assert_eq!(c.http.as_ref().unwrap().host, "all");
        assert!(ProxyConfig::from_env(|_| None).unwrap().is_none());
        assert!(
            ProxyConfig::from_env(|n| (n == "HTTPS_PROXY").then(|| "https://p:1".into())).is_err()
        );
    }

    #[test]
    fn credentials_are_encoded_and_hidden() {
        let p = ProxyServer::parse("http://us%40er:s3cret@proxy.corp:8080").unwrap();
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNAZXI6czNjcmV0"));
        assert!(!p.shown.contains("s3cret"));
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(!format!("{p:?}").contains("dXNAZXI6czNjcmV0"));
    }

    #[test]
    fn no_proxy_rules() {
        let c = config(&[
            ("http_proxy", "p:1"),
            ("https_proxy", "p:1"),
            (
                "no_proxy",
                "internal.corp, .svc,10.0.0.0/8,[::1],localhost:8080,fd00::/8",
            ),
        ]);
        assert!(c.route(&ep(true, "hub.example", 443)).is_some());
        assert!(c.route(&ep(true, "internal.corp", 443)).is_none());
        assert!(c.route(&ep(true, "a.b.internal.corp", 443)).is_none());
        assert!(c.route(&ep(true, "notinternal.corp", 443)).is_some());
        assert!(c.route(&ep(false, "minio.ns.svc", 9000)).is_none());
        assert!(c.route(&ep(false, "10.2.3.4", 80)).is_none());
        assert!(c.route(&ep(false, "11.2.3.4", 80)).is_some());
        assert!(c.route(&ep(false, "::1", 80)).is_none());
        assert!(c.route(&ep(false, "fd12::1", 80)).is_none());
        assert!(c.route(&ep(false, "localhost", 8080)).is_none());
        assert!(c.route(&ep(false, "localhost", 8081)).is_some());
        let all = config(&[("http_proxy", "p:1"), ("NO_PROXY", "*")]);
        assert!(all.route(&ep(false, "x", 80)).is_none());
        let https_only = config(&[("HTTPS_PROXY", "p:1")]);
        assert!(https_only.route(&ep(false, "x", 80)).is_none());
    }
}
