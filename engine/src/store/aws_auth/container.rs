//! Container credentials: an agent on the node hands them out over http, to ECS tasks
//! (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, on 169.254.170.2) and to EKS Pod Identity pods
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
//!
//! As in the SDKs, a full URI over plain http must name a loopback address or one of the
//! agents' link-local addresses: credentials never travel in clear text off the node. A
//! relative URI must be a path (a leading `/`) that keeps the ECS agent as the host. The
//! authorization token file is read again at each fetch (EKS rotates it), and the token never
//! shows in `Debug` output.

use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

use super::{Call, CredentialError, Creds, JsonCreds, read_token, send};
use crate::http::Timeouts;
use crate::store::control::Control;
use crate::store::env::Env;

const PROVIDER: &str = "container credentials";
const ECS_HOST: &str = "169.254.170.2";
const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    stall: Duration::from_secs(5),
};
const DEADLINE: Duration = Duration::from_secs(10);

/// The container credentials endpoint and how to authorize with it.
#[derive(Debug, Clone)]
pub struct Container {
    /// `RELATIVE_URI` (ECS) or `FULL_URI`, as given.
    uri: Uri,
    token: Token,
}

#[derive(Debug, Clone)]
enum Uri {
    Relative(String),
    Full(String),
}

#[derive(Clone)]
enum Token {
    None,
    File(String),
    /// The token itself (never shown).
    Value(String),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl Container {
    /// Configured by `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, else `_FULL_URI`.
    pub fn from_env(env: &Env) -> Option<Self> {
        let uri = match (
            env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ) {
            (Some(rel), _) => Uri::Relative(rel.to_owned()),
            (None, Some(full)) => Uri::Full(full.to_owned()),
            (None, None) => return None,
        };
        let token = match (
            env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(file), _) => Token::File(file.to_owned()),
            (None, Some(value)) => Token::Value(value.to_owned()),
            (None, None) => Token::None,
        };
        Some(Self { uri, token })
    }

    pub fn describe(&self) -> String {
        let from = match &self.uri {
            Uri::Relative(rel) => format!("http://{ECS_HOST}{rel}"),
            Uri::Full(full) => full.clone(),
        };
        match &self.token {
            Token::File(f) => format!("container credentials from {from} (token in {f})"),
            _ => format!("container credentials from {from}"),
        }
    }

    /// The endpoint's URL, refused when plain http would leave the node.
    fn url(&self) -> Result<Url, CredentialError> {
        let full = match &self.uri {
            Uri::Relative(rel) => return relative_url(rel),
            Uri::Full(full) => full,
        };
        let refuse = |reason: String| CredentialError::ContainerUri {
            uri: full.clone(),
            reason,
        };
        let url = Url::parse(full).map_err(|e| refuse(format!("not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if allowed_http_host(url.host()) => {}
            "http" => {
                return Err(refuse(
                    "plain http to a host that is not loopback nor the container agent".into(),
                ));
            }
            other => return Err(refuse(format!("scheme `{other}`"))),
        }
        Ok(url)
    }

    fn authorization(&self) -> Result<Option<String>, CredentialError> {
        let (var, value) = match &self.token {
            Token::None => return Ok(None),
            Token::File(path) => (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                read_token("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", path)?,
            ),
            Token::Value(v) => ("AWS_CONTAINER_AUTHORIZATION_TOKEN", v.clone()),
        };
        if value.contains(['\r', '\n']) {
            return Err(CredentialError::TokenLine { var });
        }
        Ok(Some(value))
    }

    pub fn fetch(&self, control: &Control) -> Result<Creds, CredentialError> {
        let url = self.url()?;
        let headers = self
            .authorization()?
            .map(|t| ("Authorization".to_owned(), t))
            .into_iter()
            .chain([("Accept".to_owned(), "application/json".to_owned())])
            .collect();
        // A node-local agent: never through a proxy.
        let reply = send(
            &control.direct(),
            Call {
                provider: PROVIDER,
                method: "GET",
                url: &url,
                headers,
                body: None,
                timeouts: TIMEOUTS,
                deadline: DEADLINE,
            },
        )?;
        let origin = crate::redact(&url).to_string();
        if reply.status() != 200 {
            let hint = match reply.status() {
                401 | 403 => "; check AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]",
                _ => "",
            };
            return Err(CredentialError::Refused {
                provider: PROVIDER,
                origin,
                status: reply.status(),
                detail: format!("{}{hint}", reply.snippet()),
            });
        }
        JsonCreds::parse(&reply.body, PROVIDER, &origin)
    }
}

/// The ECS agent's URL of a relative URI: a path (it must start with `/`, or `@evil.example/x`
/// would make the host evil.example), and the parsed URL's host is the agent's.
fn relative_url(rel: &str) -> Result<Url, CredentialError> {
    let refuse = |reason: &str| CredentialError::RelativeUri {
        uri: rel.to_owned(),
        reason: reason.to_owned(),
    };
    if !rel.starts_with('/') || rel.starts_with("//") {
        return Err(refuse("it does not start with a single `/`"));
    }
    let url = Url::parse(&format!("http://{ECS_HOST}{rel}"))
        .map_err(|e| refuse(&format!("not a URL path: {e}")))?;
    if url.host_str() != Some(ECS_HOST) || url.port().is_some() {
        return Err(refuse("it names another host"));
    }
    Ok(url)
}

/// Loopback, or the ECS (169.254.170.2) and EKS Pod Identity (169.254.170.23, fd00:ec2::23)
/// agents.
fn allowed_http_host(host: Option<Host<&str>>) -> bool {
    let ip: IpAddr = match host {
        Some(Host::Ipv4(ip)) => ip.into(),
        Some(Host::Ipv6(ip)) => ip.into(),
        Some(Host::Domain(name)) => return name.eq_ignore_ascii_case("localhost"),
        None => return false,
    };
    let agents: [IpAddr; 3] = [
        [169, 254, 170, 2].into(),
        [169, 254, 170, 23].into(),
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23].into(),
    ];
    ip.is_loopback() || agents.contains(&ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(vars: &[(&str, &str)]) -> Container {
        Container::from_env(&vars.iter().copied().collect()).unwrap()
    }

    #[test]
    fn full_uris_over_http_stay_on_the_node() {
        for ok in [
            "http://127.0.0.1:8080/creds",
            "http://127.9.9.9/creds",
            "http://localhost/creds",
            "http://[::1]/creds",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://169.254.170.2/creds",
            "https://creds.example.com/x",
        ] {
            let c = container(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", ok)]);
            assert!(c.url().is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/creds",
            "http://creds.example.com/x",
            "ftp://127.0.0.1/x",
            "not a url",
        ] {
            let c = container(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", bad)]);
            let err = c.url().unwrap_err().to_string();
            assert!(
                err.starts_with("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_relative_uri_wins_and_goes_to_the_ecs_agent() {
        let c = container(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.0.0.1/x"),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/abc",
            ),
        ]);
        assert_eq!(
            c.url().unwrap().as_str(),
            "http://169.254.170.2/v2/credentials/abc"
        );
    }

    #[test]
    fn a_relative_uri_cannot_name_another_host() {
        for bad in [
            "@evil.example/x",
            ":8080@evil.example/x",
            "evil.example/x",
            "//evil.example/x",
            ".evil.example/x",
        ] {
            let c = container(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", bad)]);
            let err = c.url().unwrap_err();
            assert!(
                matches!(err, CredentialError::RelativeUri { .. }),
                "{bad}: {err}"
            );
        }
        let c = container(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/c?id=1")]);
        assert_eq!(c.url().unwrap().host_str(), Some(ECS_HOST));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let c = container(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/x"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "sekrit-auth-token"),
        ]);
        let shown = format!("{c:?} {:?}", super::super::Provider::Container(c.clone()));
        assert!(!shown.contains("sekrit-auth-token"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let file = container(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/x"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/token"),
        ]);
        assert!(format!("{file:?}").contains("/var/run/token"));
    }

    #[test]
    fn the_token_file_wins_over_the_token_and_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let file = file.to_str().unwrap();
        let c = container(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/x"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "from-env"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", file),
        ]);
        assert_eq!(c.authorization().unwrap().as_deref(), Some("from-file"));
        let c = container(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/x"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "a\r\nX-Injected: 1"),
        ]);
        assert!(matches!(
            c.authorization(),
            Err(CredentialError::TokenLine { .. })
        ));
        let missing = container(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/x"),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                "/nonexistent/token",
            ),
        ]);
        let err = missing.authorization().unwrap_err().to_string();
        assert!(
            err.starts_with("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: cannot read the token file /nonexistent/token"),
            "{err}"
        );
    }
}
