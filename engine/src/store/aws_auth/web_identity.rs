//! Web identity: a token file (on EKS, the ServiceAccount token that IRSA projects) traded at
//! STS for a role's temporary credentials with `AssumeRoleWithWebIdentity`, an unsigned call.
//!
//! The STS endpoint is, as in the SDKs: `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else
//! the regional endpoint of `AWS_REGION` / `AWS_DEFAULT_REGION`, else the global one. Unlike
//! the SDKs, an `http://` endpoint is refused unless it is loopback: the token is a bearer
//! credential, and it never crosses the network in clear text. Error excerpts of STS's answer
//! never show the token, even when the endpoint echoes the request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use url::{Host, Url};

use super::{Call, CredentialError, Creds, read_token, send};
use crate::http::Timeouts;
use crate::store::control::Control;
use crate::store::env::Env;

const PROVIDER: &str = "web identity";
const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(3),
    stall: Duration::from_secs(10),
};
const DEADLINE: Duration = Duration::from_secs(30);

/// A role to assume with the token in a file.
#[derive(Debug, Clone)]
pub struct WebIdentity {
    role_arn: String,
    token_file: String,
    session_name: String,
    endpoint: String,
}

impl WebIdentity {
    /// Configured when both `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` are set.
    pub fn from_env(env: &Env) -> Option<Self> {
        let role_arn = env.get("AWS_ROLE_ARN")?.to_owned();
        let token_file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE")?.to_owned();
        let session_name = env
            .get("AWS_ROLE_SESSION_NAME")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                format!("modelpull-{ms}")
            });
        Some(Self {
            role_arn,
            token_file,
            session_name,
            endpoint: sts_endpoint(env),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "web identity: role {} with the token in {} (AWS_WEB_IDENTITY_TOKEN_FILE), at {}",
            self.role_arn, self.token_file, self.endpoint
        )
    }

    pub fn fetch(&self, control: &Control) -> Result<Creds, CredentialError> {
        let token = read_token("AWS_WEB_IDENTITY_TOKEN_FILE", &self.token_file)?;
        let url = Url::parse(&self.endpoint).map_err(|e| CredentialError::Malformed {
            provider: PROVIDER,
            origin: "AWS_ENDPOINT_URL_STS".into(),
            what: format!("`{}` is not a URL: {e}", self.endpoint),
        })?;
        check_transport(&url)?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &self.session_name)
            .append_pair("WebIdentityToken", &token)
            .finish();
        let reply = send(
            control,
            Call {
                provider: PROVIDER,
                method: "POST",
                url: &url,
                headers: vec![(
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                )],
                body: Some(body.into_bytes()),
                timeouts: TIMEOUTS,
                deadline: DEADLINE,
            },
        )?;
        let origin = crate::redact(&url).to_string();
        if reply.status() != 200 {
            return Err(CredentialError::Refused {
                provider: PROVIDER,
                origin,
                status: reply.status(),
                detail: format!(
                    "{} (role {}, token from {})",
                    hide_token(
                        sts_error(&reply.body).unwrap_or_else(|| reply.snippet()),
                        &token
                    ),
                    self.role_arn,
                    self.token_file
                ),
            });
        }
        parse_reply(&reply.body).map_err(|what| CredentialError::Malformed {
            provider: PROVIDER,
            origin,
            what,
        })
    }
}

/// Where STS is, as the SDKs choose it.
fn sts_endpoint(env: &Env) -> String {
    if let Some(url) = env.first(&["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"]) {
        return url.to_owned();
    }
    match env.first(&["AWS_REGION", "AWS_DEFAULT_REGION"]) {
        Some(region) if region.starts_with("cn-") => {
            format!("https://sts.{region}.amazonaws.com.cn")
        }
        Some(region) => format!("https://sts.{region}.amazonaws.com"),
        None => "https://sts.amazonaws.com".into(),
    }
}

/// Refuses plain http to anything but loopback: the token must not travel in clear text.
fn check_transport(url: &Url) -> Result<(), CredentialError> {
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(CredentialError::PlainHttpSts {
            endpoint: crate::redact(url).to_string(),
        });
    }
    Ok(())
}

/// `text` with every copy of the token (as sent, form-encoded, and as is) masked: an endpoint
/// that echoes the request must not put the token into an error message.
fn hide_token(text: String, token: &str) -> String {
    if token.is_empty() {
        return text;
    }
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    text.replace(&encoded, "<token>").replace(token, "<token>")
}

/// `Code: Message` of an STS error body.
fn sts_error(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let find = |n: &str| {
        doc.descendants()
            .find(|d| d.tag_name().name() == n)
            .and_then(|d| d.text())
    };
    Some(match (find("Code")?, find("Message")) {
        (code, Some(msg)) => format!("{code}: {msg}"),
        (code, None) => code.to_owned(),
    })
}

/// The credentials of an `AssumeRoleWithWebIdentityResponse`.
fn parse_reply(body: &[u8]) -> Result<Creds, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_owned())?;
    let doc =
        roxmltree::Document::parse(text).map_err(|e| format!("the answer is not XML: {e}"))?;
    let creds = doc
        .descendants()
        .find(|d| d.tag_name().name() == "Credentials")
        .ok_or("the answer has no Credentials")?;
    let field = |n: &str| {
        creds
            .children()
            .find(|c| c.tag_name().name() == n)
            .and_then(|c| c.text())
            .map(str::to_owned)
            .ok_or_else(|| format!("the answer's Credentials have no {n}"))
    };
    let expiration = field("Expiration")?;
    Ok(Creds {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
        expires: Some(
            super::parse_time(&expiration)
                .ok_or_else(|| format!("Expiration `{expiration}` is not an ISO 8601 time"))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter().copied().collect()
    }

    #[test]
    fn the_sts_endpoint_as_the_sdks_choose_it() {
        assert_eq!(sts_endpoint(&env(&[])), "https://sts.amazonaws.com");
        assert_eq!(
            sts_endpoint(&env(&[("AWS_DEFAULT_REGION", "eu-west-1")])),
            "https://sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            sts_endpoint(&env(&[
                ("AWS_REGION", "cn-north-1"),
                ("AWS_DEFAULT_REGION", "eu-west-1")
            ])),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            sts_endpoint(&env(&[
                ("AWS_ENDPOINT_URL", "http://minio:9000"),
                ("AWS_REGION", "us-east-2")
            ])),
            "http://minio:9000"
        );
        assert_eq!(
            sts_endpoint(&env(&[
                ("AWS_ENDPOINT_URL", "http://minio:9000"),
                ("AWS_ENDPOINT_URL_STS", "https://sts.internal")
            ])),
            "https://sts.internal"
        );
    }

    #[test]
    fn the_token_goes_over_plain_http_to_loopback_only() {
        for ok in [
            "https://sts.amazonaws.com",
            "https://minio:9000",
            "http://127.0.0.1:9000",
            "http://localhost:4566",
            "http://[::1]:4566",
        ] {
            assert!(check_transport(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://minio:9000",
            "http://10.0.0.5/",
            "http://sts.example.com",
        ] {
            let err = check_transport(&Url::parse(bad).unwrap()).unwrap_err();
            assert!(matches!(err, CredentialError::PlainHttpSts { .. }), "{bad}");
        }
    }

    #[test]
    fn a_plain_http_endpoint_is_refused_before_the_token_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "eyJ.secret-token").unwrap();
        let w = WebIdentity::from_env(&env(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()),
            ("AWS_ENDPOINT_URL", "http://minio.invalid:9000"),
        ]))
        .unwrap();
        let control = Control::new(&crate::Options::default().client()).unwrap();
        let err = w.fetch(&control).unwrap_err();
        assert!(matches!(err, CredentialError::PlainHttpSts { .. }), "{err}");
        assert!(!err.to_string().contains("secret-token"), "{err}");
    }

    #[test]
    fn error_excerpts_never_echo_the_token() {
        let token = "eyJhbGciOi.x+y/z=";
        let echoed = format!(
            "Action=AssumeRoleWithWebIdentity&WebIdentityToken={}",
            url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
        );
        let shown = hide_token(echoed, token);
        assert!(!shown.contains("eyJhbGciOi"), "{shown}");
        assert!(shown.ends_with("WebIdentityToken=<token>"), "{shown}");
        assert_eq!(hide_token(format!("bad {token}"), token), "bad <token>");
    }

    #[test]
    fn configured_only_with_a_role_and_a_token_file() {
        assert!(WebIdentity::from_env(&env(&[("AWS_ROLE_ARN", "arn")])).is_none());
        let w = WebIdentity::from_env(&env(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_SESSION_NAME", "pod-a"),
        ]))
        .unwrap();
        assert_eq!(w.session_name, "pod-a");
        assert!(w.describe().contains("/var/run/token"));
        let generated = WebIdentity::from_env(&env(&[
            ("AWS_ROLE_ARN", "arn"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ]))
        .unwrap();
        assert!(generated.session_name.starts_with("modelpull-"));
    }

    #[test]
    fn sts_answers() {
        let ok = br#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>s3cret</SecretAccessKey>
      <SessionToken>session</SessionToken>
      <Expiration>2030-01-01T00:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        let c = parse_reply(ok).unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE");
        assert_eq!(c.session_token.as_deref(), Some("session"));
        assert!(c.expires.is_some());
        assert!(parse_reply(b"<x/>").unwrap_err().contains("no Credentials"));
        let denied = br#"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found</Message></Error></ErrorResponse>"#;
        assert_eq!(
            sts_error(denied).unwrap(),
            "InvalidIdentityToken: No OpenIDConnect provider found"
        );
    }
}
