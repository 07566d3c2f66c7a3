//! AWS credentials found the way the AWS SDKs find them (their "default credential chain"),
//! for the S3 store when no static keys are given and anonymous access was not asked for.
//! KServe's storage-initializer gets this from boto3; a pod on EKS or EC2 usually has no keys
//! at all, only an identity: a projected ServiceAccount token (IRSA), an EKS Pod Identity
//! agent, or the node's instance role.
//!
//! The sources, first match wins, as the SDKs order them:
//!
//! 1. static keys: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. web identity: `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` (+ `AWS_ROLE_SESSION_NAME`),
//!    exchanged at STS with `AssumeRoleWithWebIdentity` ([`web_identity`]);
//! 3. container credentials: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS) or `_FULL_URI`
//!    (EKS Pod Identity), with `AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]` ([`container`]);
//! 4. the shared files: `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`, `AWS_PROFILE`; static
//!    keys and `credential_process` ([`profile`]);
//! 5. the EC2 instance role over IMDSv2 ([`imds`]).
//!
//! Temporary credentials are cached and renewed before they expire, off the data path
//! ([`cache`]). Every request here runs on the engine's own HTTP client (the control plane),
//! with short timeouts: a missing identity fails in seconds, never hangs a pull.

mod cache;
mod container;
mod imds;
mod profile;
mod web_identity;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_smithy_runtime_api::client::identity::Identity;
use serde::Deserialize;
use url::Url;

use super::control::{self, Control, Reply};
use super::env::Env;
use crate::http::{Request, Timeouts};

pub use cache::{Cached, Clock, Fetch};
pub use container::Container;
pub use imds::Imds;
pub use profile::Process;
pub use web_identity::WebIdentity;

/// One set of AWS credentials. Debug output never shows the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// When temporary credentials stop working; `None` for long-term keys.
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("access_key_id", &self.access_key_id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Creds {
    /// What `aws-sigv4` signs with.
    pub fn identity(&self) -> Identity {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            self.expires,
            "modelpull",
        )
        .into()
    }
}

/// The credentials JSON that container endpoints, IMDS and `credential_process` answer with.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCreds {
    access_key_id: String,
    secret_access_key: String,
    #[serde(alias = "SessionToken")]
    token: Option<String>,
    expiration: Option<String>,
}

impl JsonCreds {
    /// Parses `body`; `what` names the source for the error (never the body: it holds keys).
    fn parse(body: &[u8], provider: &'static str, origin: &str) -> Result<Creds, CredentialError> {
        let bad = |what: &str| CredentialError::Malformed {
            provider,
            origin: origin.to_owned(),
            what: what.to_owned(),
        };
        let json: JsonCreds = serde_json::from_slice(body)
            .map_err(|_| bad("not a JSON object with AccessKeyId and SecretAccessKey"))?;
        let expires = match json.expiration.as_deref() {
            None => None,
            Some(text) => Some(parse_time(text).ok_or_else(|| {
                bad(&format!(
                    "Expiration `{}` is not an ISO 8601 time",
                    text.escape_debug()
                ))
            })?),
        };
        if json.access_key_id.is_empty() || json.secret_access_key.is_empty() {
            return Err(bad("AccessKeyId or SecretAccessKey is empty"));
        }
        Ok(Creds {
            access_key_id: json.access_key_id,
            secret_access_key: json.secret_access_key,
            session_token: json.token.filter(|t| !t.is_empty()),
            expires,
        })
    }
}

/// An ISO 8601 / RFC 3339 time as AWS writes `Expiration` (`2026-01-02T03:04:05Z`).
fn parse_time(text: &str) -> Option<SystemTime> {
    use aws_smithy_types::date_time::{DateTime, Format};
    let t = DateTime::from_str(text.trim(), Format::DateTime).ok()?;
    SystemTime::try_from(t).ok()
}

/// Why credentials could not be had. Messages name the variable, file or endpoint involved,
/// never a key or token.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "{var}: cannot read the token file {path}: {source}; mount the token there or unset {var}"
    )]
    TokenFile {
        var: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{var}: the token file {path} is empty")]
    EmptyTokenFile { var: &'static str, path: String },
    #[error("{var} holds a line break; a token is one line")]
    TokenLine { var: &'static str },
    #[error("{provider}: cannot reach {origin}: {message}")]
    Unreachable {
        provider: &'static str,
        origin: String,
        message: String,
    },
    #[error("{provider}: {origin} answered HTTP {status}: {detail}")]
    Refused {
        provider: &'static str,
        origin: String,
        status: u16,
        detail: String,
    },
    #[error("{provider}: the answer of {origin} cannot be used: {what}")]
    Malformed {
        provider: &'static str,
        origin: String,
        what: String,
    },
    #[error(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI `{uri}` is not allowed: {reason} (use https, or http to a loopback address or the ECS/EKS agent's 169.254.170.2 / 169.254.170.23)"
    )]
    ContainerUri { uri: String, reason: String },
    #[error(
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI `{uri}` is not allowed: {reason} (it is a path on the ECS agent, 169.254.170.2, starting with `/`)"
    )]
    RelativeUri { uri: String, reason: String },
    #[error(
        "web identity: the STS endpoint `{endpoint}` is plain http to a host that is not loopback, and the web identity token would cross the network in clear text; set AWS_ENDPOINT_URL_STS to an https endpoint"
    )]
    PlainHttpSts { endpoint: String },
    #[error("credential_process of profile `{profile}` failed: {message}")]
    Process { profile: String, message: String },
    #[error("{last} (from a try {ago} s ago; credentials are fetched again in {next} s)")]
    Failing { last: String, ago: u64, next: u64 },
    #[error("the credential request could not run: {0}")]
    Runtime(String),
}

/// Where credentials come from, chosen from the environment (and the shared files) alone:
/// nothing here is fetched until the first request is signed.
#[derive(Debug, Clone)]
pub enum Provider {
    /// Long-term (or caller-given session) keys: from the environment or a profile.
    Static {
        creds: Creds,
        origin: String,
    },
    WebIdentity(WebIdentity),
    Container(Container),
    Process(Process),
    Imds(Imds),
}

impl Provider {
    /// The first source the environment configures, in the SDKs' order. `aws_endpoint` says
    /// the S3 endpoint is AWS's own: only then is the EC2 metadata service asked without being
    /// named (`AWS_EC2_METADATA_SERVICE_ENDPOINT`), since its role credentials are good for
    /// AWS only and the link-local probe costs a second where no such service exists. `None`:
    /// no source at all, which the store refuses as boto3 does ([`nothing_found`]). The error
    /// names a half-given key pair.
    pub fn from_env(env: &Env, aws_endpoint: bool) -> Result<Option<Self>, String> {
        match (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => {
                return Ok(Some(Provider::Static {
                    creds: Creds {
                        access_key_id: id.to_owned(),
                        secret_access_key: secret.to_owned(),
                        session_token: env.get("AWS_SESSION_TOKEN").map(str::to_owned),
                        expires: None,
                    },
                    origin: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                }));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or awsAnonymousCredential=true)"
                        .into(),
                );
            }
            (None, None) => {}
        }
        if let Some(p) = WebIdentity::from_env(env) {
            return Ok(Some(Provider::WebIdentity(p)));
        }
        if let Some(p) = Container::from_env(env) {
            return Ok(Some(Provider::Container(p)));
        }
        if let Some(p) = profile::from_env(env) {
            return Ok(Some(p));
        }
        Ok(Imds::from_env(env, aws_endpoint).map(Provider::Imds))
    }

    /// Which source, for messages ("web identity: role … with the token in …").
    pub fn describe(&self) -> String {
        match self {
            Provider::Static { origin, .. } => format!("static keys from {origin}"),
            Provider::WebIdentity(p) => p.describe(),
            Provider::Container(p) => p.describe(),
            Provider::Process(p) => p.describe(),
            Provider::Imds(p) => p.describe(),
        }
    }

    /// Fetches credentials now. `Ok(None)`: the source has none to give (no instance
    /// metadata service here, or an instance without a role).
    pub fn fetch(&self, control: &Control) -> Result<Option<Creds>, CredentialError> {
        match self {
            Provider::Static { creds, .. } => Ok(Some(creds.clone())),
            Provider::WebIdentity(p) => p.fetch(control).map(Some),
            Provider::Container(p) => p.fetch(control).map(Some),
            Provider::Process(p) => p.fetch().map(Some),
            Provider::Imds(p) => p.fetch(control),
        }
    }

    /// The keys a signer uses: fixed for static ones, else fetched at the first request and
    /// renewed before they expire.
    pub fn keys(self, control: &Control) -> Keys {
        match self {
            Provider::Static { creds, origin } => Keys::Static { creds, origin },
            provider => Keys::Fetched(Arc::new(Cached::new(
                Live {
                    provider,
                    control: control.clone(),
                },
                Clock::system(),
            ))),
        }
    }
}

/// Why a pull that did not ask for anonymous access is refused when the chain found no
/// source: each source and where it looked, and the two ways out.
pub fn nothing_found(env: &Env, aws_endpoint: bool) -> String {
    let instance_role = if env
        .get("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        "the EC2 instance role (AWS_EC2_METADATA_DISABLED=true)"
    } else if aws_endpoint {
        "the EC2 instance role"
    } else {
        "the EC2 instance role (not asked for an endpoint outside AWS without \
         AWS_EC2_METADATA_SERVICE_ENDPOINT)"
    };
    format!(
        "no AWS credentials found; tried AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, web \
         identity (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), container credentials \
         (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI), {}, {instance_role}. Set one, \
         or awsAnonymousCredential=true to send the requests unsigned (a public bucket)",
        profile::searched(env)
    )
}

/// A provider with the control plane it fetches over.
#[derive(Debug)]
pub struct Live {
    provider: Provider,
    control: Control,
}

impl Fetch for Live {
    fn fetch(&self) -> Result<Option<Creds>, CredentialError> {
        self.provider.fetch(&self.control)
    }

    fn describe(&self) -> String {
        self.provider.describe()
    }
}

/// The credentials a signer asks for at each request.
#[derive(Debug, Clone)]
pub enum Keys {
    Static { creds: Creds, origin: String },
    Fetched(Arc<Cached<Live>>),
}

impl Keys {
    /// The credentials to sign with now; `None` when the source has none to give (an instance
    /// without a role), which the signer refuses.
    pub fn current(&self) -> Result<Option<Creds>, String> {
        match self {
            Keys::Static { creds, .. } => Ok(Some(creds.clone())),
            Keys::Fetched(cached) => cached.current().map_err(|e| e.to_string()),
        }
    }

    /// Which source, for messages.
    pub fn describe(&self) -> String {
        match self {
            Keys::Static { origin, .. } => format!("static keys from {origin}"),
            Keys::Fetched(cached) => cached.describe(),
        }
    }
}

/// A credential request: what the HTTP helper sends.
struct Call<'a> {
    provider: &'static str,
    method: &'static str,
    url: &'a Url,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    /// Connect and stall timeouts.
    timeouts: Timeouts,
    /// The whole request, retries included, ends by then.
    deadline: Duration,
}

/// Sends `call` over the control plane; a connection that cannot be made or a deadline
/// passed is [`CredentialError::Unreachable`], any answer is returned whatever its status.
fn send(control: &Control, call: Call<'_>) -> Result<Reply, CredentialError> {
    let origin = crate::redact(call.url).to_string();
    let unreachable = |message: String| CredentialError::Unreachable {
        provider: call.provider,
        origin: origin.clone(),
        message,
    };
    let control = control.with_timeouts(call.timeouts);
    let (method, url, headers, body, deadline) = (
        call.method,
        call.url.clone(),
        call.headers,
        call.body,
        call.deadline,
    );
    let outcome = control
        .run(move |client| async move {
            let req = Request {
                method,
                headers: &headers,
                body: body.as_deref(),
                ..Request::get(&url)
            };
            monoio::time::timeout(deadline, control::fetch(&client, &req)).await
        })
        .map_err(|e| CredentialError::Runtime(e.to_string()))?;
    match outcome {
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            deadline.as_secs_f32()
        ))),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// A token read from a file named by `var`, as the SDKs read it: whole, without the final
/// line break, re-read at each fetch (projected tokens are rotated in place).
fn read_token(var: &'static str, path: &str) -> Result<String, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::TokenFile {
        var,
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim_end_matches(['\r', '\n']).to_owned();
    if token.trim().is_empty() {
        return Err(CredentialError::EmptyTokenFile {
            var,
            path: path.to_owned(),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter().copied().collect()
    }

    #[test]
    fn the_chain_takes_the_first_configured_source() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "jwt").unwrap();
        let token = token.to_str().unwrap();
        let all = [
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
            ("HOME", "/nonexistent"),
        ];
        let chosen = |n: usize| {
            Provider::from_env(&env(&all[n..]), true)
                .unwrap()
                .map(|p| p.describe())
        };
        assert_eq!(
            chosen(0).unwrap(),
            "static keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
        assert!(chosen(2).unwrap().starts_with("web identity"));
        assert!(chosen(4).unwrap().starts_with("container credentials"));
        assert!(chosen(5).unwrap().starts_with("the EC2 instance role"));
        // Half a web identity is not one (as the SDKs): the next source is asked.
        let half = env(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
            ("HOME", "/nonexistent"),
        ]);
        assert!(Provider::from_env(&half, false).unwrap().is_none());
        assert!(
            Provider::from_env(&env(&[("AWS_SECRET_ACCESS_KEY", "SK")]), true)
                .unwrap_err()
                .contains("set both")
        );
    }

    #[test]
    fn imds_is_asked_unnamed_only_for_aws_endpoints_and_never_when_disabled() {
        let home = [("HOME", "/nonexistent")];
        assert!(Provider::from_env(&env(&home), false).unwrap().is_none());
        let on_aws = Provider::from_env(&env(&home), true).unwrap().unwrap();
        assert!(
            on_aws.describe().contains("169.254.169.254"),
            "{}",
            on_aws.describe()
        );
        let disabled = env(&[
            ("HOME", "/nonexistent"),
            ("AWS_EC2_METADATA_DISABLED", "TRUE"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
        ]);
        assert!(Provider::from_env(&disabled, true).unwrap().is_none());
    }

    #[test]
    fn credentials_json_as_aws_writes_it() {
        let c = JsonCreds::parse(
            br#"{"Code": "Success", "AccessKeyId": "ASIA1", "SecretAccessKey": "s3cret", "Token": "tok", "Expiration": "2030-01-02T03:04:05Z"}"#,
            "test",
            "here",
        )
        .unwrap();
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert_eq!(
            c.expires.unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_553_445)
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let process = JsonCreds::parse(
            br#"{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "S", "SessionToken": "T"}"#,
            "test",
            "here",
        )
        .unwrap();
        assert_eq!(process.session_token.as_deref(), Some("T"));
        assert_eq!(process.expires, None);
        for bad in [
            &br#"{"AccessKeyId": "A"}"#[..],
            br#"{"AccessKeyId": "A", "SecretAccessKey": "S", "Expiration": "soon"}"#,
            b"<xml/>",
        ] {
            let err = JsonCreds::parse(bad, "test", "here")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("test: the answer of here cannot be used"),
                "{err}"
            );
        }
    }

    #[test]
    fn token_files_are_read_whole_and_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "eyJ.token\n").unwrap();
        assert_eq!(
            read_token("AWS_WEB_IDENTITY_TOKEN_FILE", path.to_str().unwrap()).unwrap(),
            "eyJ.token"
        );
        let missing = dir.path().join("missing");
        let err = read_token("AWS_WEB_IDENTITY_TOKEN_FILE", missing.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("AWS_WEB_IDENTITY_TOKEN_FILE: cannot read the token file"));
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token("X", path.to_str().unwrap()),
            Err(CredentialError::EmptyTokenFile { .. })
        ));
    }
}
