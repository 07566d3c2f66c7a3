//! The EC2 instance role, from the instance metadata service with IMDSv2: a session token
//! (`PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`), then the role's
//! name and its credentials (`GET /latest/meta-data/iam/security-credentials/[role]` with
//! `X-aws-ec2-metadata-token`).
//!
//! As the SDKs: `AWS_EC2_METADATA_DISABLED=true` turns it off, `AWS_EC2_METADATA_SERVICE_ENDPOINT`
//! (or `_ENDPOINT_MODE=IPv6`) moves it, and connecting may take one second. A service that
//! does not answer the token request in two seconds means "not on EC2": no credentials, and
//! the S3 store refuses to go on (as boto3's `NoCredentialsError`) unless anonymous access was
//! asked for. IMDSv1 (no token) is not used.

use std::time::Duration;

use url::Url;

use super::{Call, CredentialError, Creds, JsonCreds, send};
use crate::http::Timeouts;
use crate::store::control::{Control, Reply};
use crate::store::env::Env;

const PROVIDER: &str = "EC2 instance metadata";
const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(1),
    stall: Duration::from_secs(1),
};
const DEADLINE: Duration = Duration::from_secs(2);
/// The lifetime asked for the session token (the SDKs' six hours).
const TOKEN_TTL: &str = "21600";
const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// The metadata service to ask.
#[derive(Debug, Clone)]
pub struct Imds {
    endpoint: String,
}

impl Imds {
    /// The service, unless disabled. Without `AWS_EC2_METADATA_SERVICE_ENDPOINT` it is asked
    /// only when `implicit` (see [`super::Provider::from_env`]).
    pub fn from_env(env: &Env, implicit: bool) -> Option<Self> {
        if env
            .get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return None;
        }
        if let Some(endpoint) = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
            return Some(Self {
                endpoint: endpoint.trim_end_matches('/').to_owned(),
            });
        }
        if !implicit {
            return None;
        }
        let ipv6 = env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
            .is_some_and(|m| m.eq_ignore_ascii_case("ipv6"));
        let endpoint = if ipv6 {
            "http://[fd00:ec2::254]"
        } else {
            "http://169.254.169.254"
        };
        Some(Self {
            endpoint: endpoint.into(),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "the EC2 instance role (instance metadata at {})",
            self.endpoint
        )
    }

    fn url(&self, path: &str) -> Result<Url, CredentialError> {
        let text = format!("{}{path}", self.endpoint);
        Url::parse(&text).map_err(|e| CredentialError::Malformed {
            provider: PROVIDER,
            origin: "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            what: format!("`{text}` is not a URL: {e}"),
        })
    }

    fn call(
        &self,
        control: &Control,
        method: &'static str,
        path: &str,
        header: (&str, &str),
    ) -> Result<(Reply, String), CredentialError> {
        let url = self.url(path)?;
        let reply = send(
            control,
            Call {
                provider: PROVIDER,
                method,
                url: &url,
                headers: vec![(header.0.to_owned(), header.1.to_owned())],
                body: None,
                timeouts: TIMEOUTS,
                deadline: DEADLINE,
            },
        )?;
        Ok((reply, crate::redact(&url).to_string()))
    }

    /// The instance role's credentials; `Ok(None)` off EC2 or on an instance without a role.
    pub fn fetch(&self, control: &Control) -> Result<Option<Creds>, CredentialError> {
        // Link-local, plain http: never through a proxy.
        let control = control.direct();
        let token = match self.call(
            &control,
            "PUT",
            "/latest/api/token",
            ("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL),
        ) {
            Err(CredentialError::Unreachable { message, .. }) => {
                tracing::debug!(endpoint = %self.endpoint, %message, "no instance metadata service: no instance role");
                return Ok(None);
            }
            Err(e) => return Err(e),
            Ok((reply, _)) if reply.status() == 200 => {
                String::from_utf8_lossy(&reply.body).trim().to_owned()
            }
            Ok((reply, origin)) => {
                tracing::warn!(%origin, status = reply.status(), "the instance metadata service refused a session token (IMDSv2); no instance role is used");
                return Ok(None);
            }
        };
        let auth = ("X-aws-ec2-metadata-token", token.as_str());
        let (reply, origin) = self.call(&control, "GET", CREDENTIALS_PATH, auth)?;
        match reply.status() {
            200 => {}
            404 => {
                tracing::debug!(%origin, "the instance has no IAM role");
                return Ok(None);
            }
            status => return Err(refused(origin, &reply, status)),
        }
        let listing = String::from_utf8_lossy(&reply.body);
        let Some(role) = listing.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Ok(None);
        };
        let role = crate::store::encode(role, false);
        let (reply, origin) =
            self.call(&control, "GET", &format!("{CREDENTIALS_PATH}{role}"), auth)?;
        if reply.status() != 200 {
            return Err(refused(origin, &reply, reply.status()));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Code {
            code: Option<String>,
        }
        let code = serde_json::from_slice::<Code>(&reply.body)
            .ok()
            .and_then(|c| c.code);
        if let Some(code) = code.filter(|c| c != "Success") {
            return Err(CredentialError::Refused {
                provider: PROVIDER,
                origin,
                status: 200,
                detail: format!("the role's credentials are not available (Code {code})"),
            });
        }
        JsonCreds::parse(&reply.body, PROVIDER, &origin).map(Some)
    }
}

fn refused(origin: String, reply: &Reply, status: u16) -> CredentialError {
    CredentialError::Refused {
        provider: PROVIDER,
        origin,
        status,
        detail: reply.snippet(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter().copied().collect()
    }

    #[test]
    fn endpoints_and_switches() {
        assert!(Imds::from_env(&env(&[]), false).is_none());
        assert_eq!(
            Imds::from_env(&env(&[]), true).unwrap().endpoint,
            "http://169.254.169.254"
        );
        assert_eq!(
            Imds::from_env(
                &env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")]),
                true
            )
            .unwrap()
            .endpoint,
            "http://[fd00:ec2::254]"
        );
        let named = env(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://127.0.0.1:1338/",
        )]);
        assert_eq!(
            Imds::from_env(&named, false).unwrap().endpoint,
            "http://127.0.0.1:1338"
        );
        for off in ["true", "TRUE", " True "] {
            let disabled = env(&[
                ("AWS_EC2_METADATA_DISABLED", off),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1338"),
            ]);
            assert!(Imds::from_env(&disabled, true).is_none(), "{off}");
        }
        let not_off = env(&[("AWS_EC2_METADATA_DISABLED", "false")]);
        assert!(Imds::from_env(&not_off, true).is_some());
    }

    #[test]
    fn an_endpoint_that_does_not_answer_means_no_instance_role() {
        // A port nobody listens on: refused at once, as off EC2.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let imds = Imds {
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let control = Control::new(&crate::Options::default().client()).unwrap();
        let started = std::time::Instant::now();
        assert!(imds.fetch(&control).unwrap().is_none());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
