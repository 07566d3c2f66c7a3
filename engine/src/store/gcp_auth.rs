//! OAuth access tokens for Google Cloud Storage, found the way Google's own libraries find
//! them: a credentials file named by `GOOGLE_APPLICATION_CREDENTIALS` (a service account,
//! whose key signs a JWT exchanged at its `token_uri`, or a user's refresh token), else the
//! metadata server when running on Google Cloud (`GCE_METADATA_HOST`, or a machine whose
//! DMI product name says Google). Tokens live an hour; the authorizer renews one five
//! minutes before it expires, so pulls longer than that keep going.
//!
//! The agent hands credentials over in memory as `GOOGLE_APPLICATION_CREDENTIALS_JSON` (the
//! file's content), so a key never has to be written to the node's disk.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;
use url::Url;

use super::control::{self, Control};
use super::env::Env;
use crate::error::{Error, Result};
use crate::http::Request;
use crate::target::Authorize;

const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Where tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    ServiceAccount {
        email: String,
        key_der: Vec<u8>,
        token_uri: String,
    },
    User {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    Metadata {
        host: String,
    },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::ServiceAccount { .. } => "TokenSource::ServiceAccount(<redacted>)",
            TokenSource::User { .. } => "TokenSource::User(<redacted>)",
            TokenSource::Metadata { .. } => "TokenSource::Metadata",
        })
    }
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: Option<u64>,
}

impl TokenSource {
    /// The token source the environment names, if any. `detect` also looks for Google
    /// Cloud's metadata server when no variable names one (not for an emulator).
    pub fn from_env(env: &Env, detect: bool) -> Result<Option<Self>> {
        if let Some(json) = env.get("GOOGLE_APPLICATION_CREDENTIALS_JSON") {
            return Self::from_json(json.as_bytes(), "GOOGLE_APPLICATION_CREDENTIALS_JSON")
                .map(Some);
        }
        if let Some(path) = env.get("GOOGLE_APPLICATION_CREDENTIALS") {
            let text = std::fs::read(path).map_err(|e| {
                Error::InvalidOption(format!(
                    "GOOGLE_APPLICATION_CREDENTIALS: cannot read {path}: {e}"
                ))
            })?;
            return Self::from_json(&text, path).map(Some);
        }
        if let Some(host) = env.get("GCE_METADATA_HOST") {
            return Ok(Some(TokenSource::Metadata {
                host: host.to_owned(),
            }));
        }
        if !detect {
            return Ok(None);
        }
        let on_gce = std::fs::read_to_string("/sys/class/dmi/id/product_name")
            .is_ok_and(|p| p.contains("Google"));
        Ok(on_gce.then(|| TokenSource::Metadata {
            host: "metadata.google.internal".into(),
        }))
    }

    fn from_json(text: &[u8], origin: &str) -> Result<Self> {
        let bad =
            |what: &str| Error::InvalidOption(format!("Google credentials from {origin}: {what}"));
        let file: CredentialsFile =
            serde_json::from_slice(text).map_err(|_| bad("not a credentials JSON file"))?;
        let token_uri = file.token_uri.unwrap_or_else(|| GOOGLE_TOKEN_URI.into());
        match file.kind.as_str() {
            "service_account" => {
                let email = file.client_email.ok_or_else(|| bad("no client_email"))?;
                let pem = file.private_key.ok_or_else(|| bad("no private_key"))?;
                let key_der =
                    pem_to_der(&pem).ok_or_else(|| bad("private_key is not a PEM PKCS#8 key"))?;
                ring::signature::RsaKeyPair::from_pkcs8(&key_der)
                    .map_err(|_| bad("private_key is not an RSA key"))?;
                Ok(TokenSource::ServiceAccount {
                    email,
                    key_der,
                    token_uri,
                })
            }
            "authorized_user" => Ok(TokenSource::User {
                client_id: file.client_id.ok_or_else(|| bad("no client_id"))?,
                client_secret: file.client_secret.ok_or_else(|| bad("no client_secret"))?,
                refresh_token: file.refresh_token.ok_or_else(|| bad("no refresh_token"))?,
                token_uri,
            }),
            other => Err(bad(&format!(
                "credentials of type `{other}` are not supported (use a service account key)"
            ))),
        }
    }

    /// An authorizer that fetches a token at the first request (the listing, so bad
    /// credentials fail before any download) and renews it before it expires.
    pub fn authorizer(self, control: Control) -> Bearer {
        Bearer {
            source: self,
            control,
            token: Mutex::new(None),
            renewing: AtomicBool::new(false),
        }
    }

    /// Fetches a token over the control plane.
    fn fetch(&self, control: &Control) -> std::result::Result<(String, Instant), String> {
        let (url, headers, body) = match self {
            TokenSource::ServiceAccount {
                email,
                key_der,
                token_uri,
            } => {
                let jwt = service_account_jwt(email, key_der, token_uri, SystemTime::now())?;
                let body = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
                );
                (token_uri.clone(), form_headers(), Some(body))
            }
            TokenSource::User {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", client_id)
                    .append_pair("client_secret", client_secret)
                    .append_pair("refresh_token", refresh_token)
                    .finish();
                (token_uri.clone(), form_headers(), Some(body))
            }
            TokenSource::Metadata { host } => (
                format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token"),
                vec![("Metadata-Flavor".to_owned(), "Google".to_owned())],
                None,
            ),
        };
        let url = Url::parse(&url).map_err(|e| format!("token URL `{url}`: {e}"))?;
        // The metadata server answers on a link-local address and hands out a token in
        // plain http: never through a proxy.
        let control = match self {
            TokenSource::Metadata { .. } => control.direct(),
            _ => control.clone(),
        };
        let reply = control
            .run(|client| {
                let (url, headers, body) = (url.clone(), headers.clone(), body.clone());
                async move {
                    let req = Request {
                        method: if body.is_some() { "POST" } else { "GET" },
                        headers: &headers,
                        body: body.as_deref().map(str::as_bytes),
                        ..Request::get(&url)
                    };
                    control::fetch(&client, &req).await
                }
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("token request failed: {e}"))?;
        if reply.status() != 200 {
            return Err(format!(
                "the token endpoint {} answered HTTP {}: {}",
                crate::redact(&url),
                reply.status(),
                reply.snippet()
            ));
        }
        let token: TokenReply = serde_json::from_slice(&reply.body)
            .map_err(|_| "the token endpoint's answer has no access_token".to_owned())?;
        // A lifetime outside a minute to a day is not believed.
        let life = Duration::from_secs(token.expires_in.unwrap_or(3600).clamp(60, 86_400));
        Ok((token.access_token, Instant::now() + life))
    }
}

fn form_headers() -> Vec<(String, String)> {
    vec![(
        "Content-Type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )]
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// The signed JWT a service account exchanges for an access token (RFC 7523).
fn service_account_jwt(
    email: &str,
    key_der: &[u8],
    audience: &str,
    now: SystemTime,
) -> std::result::Result<String, String> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_owned())?
        .as_secs();
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": email,
        "scope": SCOPE,
        "aud": audience,
        "iat": iat,
        "exp": iat + 3600,
    });
    let signing_input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let key = ring::signature::RsaKeyPair::from_pkcs8(key_der)
        .map_err(|_| "the service account key is not an RSA key".to_owned())?;
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing the token request failed".to_owned())?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

/// Adds `Authorization: Bearer …`, renewing the token before it expires.
pub struct Bearer {
    source: TokenSource,
    control: Control,
    token: Mutex<Option<(String, Instant)>>,
    /// A renewal is under way (others keep the old token meanwhile).
    renewing: AtomicBool,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("source", &self.source)
            .finish()
    }
}

impl Bearer {
    fn cached(&self) -> Option<(String, Instant)> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Authorize for Bearer {
    /// The cached token while it has more than five minutes left; otherwise a new one. The
    /// lock is not held during the request, so other cores keep using the old (still valid)
    /// token meanwhile; a token that has expired is renewed by whichever request needs it.
    fn headers(&self, _: &str, _: &Url) -> std::result::Result<Vec<(String, String)>, String> {
        let now = Instant::now();
        let value = match self.cached() {
            Some((token, expires)) if now + RENEW_BEFORE < expires => token,
            Some((token, expires)) if now < expires && self.renewing.swap(true, Relaxed) => token,
            _ => {
                self.renewing.store(true, Relaxed);
                // On a thread of its own: the caller may be an engine core, which must not
                // start a second runtime on its own thread.
                let (source, control) = (self.source.clone(), self.control.clone());
                let fetched = std::thread::spawn(move || source.fetch(&control))
                    .join()
                    .map_err(|_| "the token request panicked".to_owned());
                self.renewing.store(false, Relaxed);
                let (token, expires) = fetched??;
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((token.clone(), expires));
                token
            }
        };
        Ok(vec![(
            "Authorization".to_owned(),
            format!("Bearer {value}"),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files() {
        let bad = TokenSource::from_json(br#"{"type":"external_account"}"#, "f.json");
        assert!(bad.unwrap_err().to_string().contains("external_account"));
        let user = TokenSource::from_json(
            br#"{"type":"authorized_user","client_id":"i","client_secret":"s3cret","refresh_token":"r"}"#,
            "f.json",
        )
        .unwrap();
        assert!(!format!("{user:?}").contains("s3cret"));
        assert!(TokenSource::from_json(b"{", "f.json").is_err());
        let no_key = TokenSource::from_json(
            br#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#,
            "f.json",
        );
        assert!(no_key.unwrap_err().to_string().contains("not an RSA key"));
    }
}
