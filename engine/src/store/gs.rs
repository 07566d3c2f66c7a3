//! `gs://bucket/prefix`: Google Cloud Storage through its JSON API.
//!
//! The listing (`/storage/v1/b/{bucket}/o?prefix=…`, paginated by `nextPageToken`) gives each
//! object's size and its crc32c (md5 as well for non-composite objects); the bytes come from
//! the media endpoint with ranged GETs. As in KServe, `gs://b/path` is the folder `path/`;
//! when that folder is empty and an object named exactly `path` exists, that one file is
//! fetched under its base name. `STORAGE_EMULATOR_HOST` points everything at an emulator.
//! Credentials: see [`super::gcp_auth`]; without any, requests are anonymous.

use serde::Deserialize;
use url::Url;

use super::control::{self, Control, Reply};
use super::env::Env;
use super::filter::Patterns;
use super::gcp_auth::TokenSource;
use super::{Manifest, base64_digest, encode};
use crate::digest::Algorithm;
use crate::error::{Error, Result};
use crate::target::{Auth, Target};

const PUBLIC: &str = "https://storage.googleapis.com";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page {
    #[serde(default)]
    pub(crate) items: Vec<Object>,
    pub(crate) next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Object {
    pub(crate) name: String,
    #[serde(deserialize_with = "size_from_string")]
    pub(crate) size: u64,
    crc32c: Option<String>,
    md5_hash: Option<String>,
}

/// One page of the JSON API's object listing.
pub(crate) fn parse_page(body: &[u8]) -> std::result::Result<Page, String> {
    serde_json::from_slice(body).map_err(|e| format!("the object listing is not valid JSON: {e}"))
}

/// GCS sends sizes as decimal strings.
fn size_from_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Text(String),
        Number(u64),
    }
    match Size::deserialize(d)? {
        Size::Number(n) => Ok(n),
        Size::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// The bucket and path of a `gs://` URI.
fn parse(uri: &str) -> Result<(String, String)> {
    let rest = uri
        .strip_prefix("gs://")
        .ok_or_else(|| Error::InvalidSource {
            input: uri.to_owned(),
            reason: "not a gs:// URI".into(),
        })?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error::InvalidSource {
            input: uri.to_owned(),
            reason: format!("`{bucket}` is not a valid bucket name"),
        });
    }
    Ok((bucket.to_owned(), path.trim_end_matches('/').to_owned()))
}

/// The API base: `STORAGE_EMULATOR_HOST` (with or without a scheme) or the public endpoint.
fn base(env: &Env) -> Result<Url> {
    let raw = env
        .get("STORAGE_EMULATOR_HOST")
        .map_or(PUBLIC.to_owned(), |h| {
            if h.contains("://") {
                h.to_owned()
            } else {
                format!("http://{h}")
            }
        });
    Url::parse(raw.trim_end_matches('/')).map_err(|e| {
        Error::InvalidOption(format!("STORAGE_EMULATOR_HOST `{raw}` is not a URL: {e}"))
    })
}

pub fn list(uri: &str, env: &Env, control: &Control, patterns: &Patterns) -> Result<Manifest> {
    let (bucket, path) = parse(uri)?;
    super::check_object_path(uri, &path)?;
    let base = base(env)?;
    // An emulator gets credentials only when the environment names them explicitly.
    let emulated = env.get("STORAGE_EMULATOR_HOST").is_some();
    let auth = TokenSource::from_env(env, !emulated)?.map_or_else(Auth::default, |source| {
        Auth::new(source.authorizer(control.clone()))
    });
    let bucket_url = format!(
        "{}/storage/v1/b/{}/o",
        base.as_str().trim_end_matches('/'),
        encode(&bucket, false)
    );
    let folder = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let objects = control.run(|client| {
        let (auth, bucket_url, folder, path) = (
            auth.clone(),
            bucket_url.clone(),
            folder.clone(),
            path.clone(),
        );
        async move {
            let mut objects = list_prefix(&client, uri, &bucket_url, &folder, &auth).await?;
            if objects.is_empty() && !path.is_empty() {
                objects = exact(&client, uri, &bucket_url, &path, &auth).await?;
            }
            Ok::<_, Error>(objects)
        }
    })??;

    let mut files = Vec::new();
    let mut skipped = 0;
    for (obj, single) in objects {
        let rel = if single {
            obj.name.rsplit('/').next().unwrap_or(&obj.name).to_owned()
        } else {
            obj.name
                .strip_prefix(folder.as_str())
                .unwrap_or(&obj.name)
                .to_owned()
        };
        if rel.is_empty() || rel.ends_with('/') || (!single && !patterns.keeps(&rel)) {
            skipped += 1;
            continue;
        }
        let mut expected = Vec::new();
        let mut checksum = "size only";
        if let Some(d) = obj
            .crc32c
            .as_deref()
            .and_then(|v| base64_digest(Algorithm::Crc32c, v))
        {
            expected.push(d);
            checksum = "crc32c";
        } else if let Some(d) = obj
            .md5_hash
            .as_deref()
            .and_then(|v| base64_digest(Algorithm::Md5, v))
        {
            expected.push(d);
            checksum = "md5";
        }
        let media = format!(
            "{}/download/storage/v1/b/{}/o/{}?alt=media",
            base.as_str().trim_end_matches('/'),
            encode(&bucket, false),
            encode(&obj.name, false)
        );
        files.push(Target {
            url: Url::parse(&media).map_err(|e| Error::Store {
                uri: uri.to_owned(),
                message: format!(
                    "object `{}` gives no valid URL: {e}",
                    obj.name.escape_debug()
                ),
            })?,
            path: rel,
            expected,
            size: Some(obj.size),
            checksum: Some(checksum.into()),
            auth: auth.clone(),
            mirrors: Vec::new(),
        });
    }
    Ok(Manifest {
        uri: uri.to_owned(),
        store: "gs",
        revision: None,
        files,
        skipped,
        ca_bundle: None,
        insecure_hosts: Vec::new(),
    })
}

async fn list_prefix(
    client: &crate::http::Client,
    uri: &str,
    bucket_url: &str,
    prefix: &str,
    auth: &Auth,
) -> Result<Vec<(Object, bool)>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = super::Pages::default();
    loop {
        let mut url = Url::parse(bucket_url).map_err(|e| Error::InvalidOption(e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("prefix", prefix);
            q.append_pair("maxResults", "1000");
            if let Some(t) = &token {
                q.append_pair("pageToken", t);
            }
        }
        let reply = get(client, uri, &url, auth).await?;
        let page = parse_page(&reply.body).map_err(|message| Error::Store {
            uri: uri.to_owned(),
            message,
        })?;
        out.extend(page.items.into_iter().map(|o| (o, false)));
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) => {
                pages.next(&t).map_err(|message| Error::Store {
                    uri: uri.to_owned(),
                    message,
                })?;
                token = Some(t);
            }
            None => return Ok(out),
        }
    }
}

/// The single object named exactly `path`, if it exists.
async fn exact(
    client: &crate::http::Client,
    uri: &str,
    bucket_url: &str,
    path: &str,
    auth: &Auth,
) -> Result<Vec<(Object, bool)>> {
    let url = Url::parse(&format!("{bucket_url}/{}", encode(path, false)))
        .map_err(|e| Error::InvalidOption(e.to_string()))?;
    let reply = control::get_authorized(client, uri, &url, auth, "the storage API").await?;
    if reply.status() == 404 {
        return Ok(Vec::new());
    }
    let reply = check(uri, reply)?;
    let obj: Object = serde_json::from_slice(&reply.body).map_err(|e| Error::Store {
        uri: uri.to_owned(),
        message: format!("the object metadata is not valid JSON: {e}"),
    })?;
    Ok(vec![(obj, true)])
}

async fn get(client: &crate::http::Client, uri: &str, url: &Url, auth: &Auth) -> Result<Reply> {
    let reply = control::get_authorized(client, uri, url, auth, "the storage API").await?;
    check(uri, reply)
}

/// The reply if it succeeded, else an error that says what to do.
fn check(uri: &str, reply: Reply) -> Result<Reply> {
    match reply.status() {
        200..=299 => Ok(reply),
        401 | 403 => Err(Error::Auth {
            uri: uri.to_owned(),
            message: format!(
                "HTTP {} from the storage API ({}); give credentials with GOOGLE_APPLICATION_CREDENTIALS or grant this identity read access to the bucket",
                reply.status(),
                error_message(&reply)
            ),
        }),
        status => Err(Error::Store {
            uri: uri.to_owned(),
            message: format!(
                "HTTP {status} from the storage API: {}",
                error_message(&reply)
            ),
        }),
    }
}

/// The `error.message` of a JSON API error body, else the body itself.
fn error_message(reply: &Reply) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    serde_json::from_slice::<Body>(&reply.body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| match reply.snippet() {
            s if s.is_empty() => "no details given".into(),
            s => s,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(parse("gs://b/a/b/").unwrap(), ("b".into(), "a/b".into()));
        assert_eq!(parse("gs://b").unwrap(), ("b".into(), "".into()));
        assert!(parse("gs:///x").is_err());
        assert!(parse("gs://b?x/y").is_err());
    }

    #[test]
    fn listing_json() {
        let page: Page = serde_json::from_str(
            r#"{"kind":"storage#objects","items":[{"name":"m/a","size":"12","crc32c":"yZRlqg==","md5Hash":"XrY7u+Ae7tCTyyK7j1rNww=="}],"nextPageToken":"t"}"#,
        )
        .unwrap();
        assert_eq!(page.items[0].size, 12);
        assert_eq!(page.next_page_token.as_deref(), Some("t"));
        let empty: Page = serde_json::from_str(r#"{"kind":"storage#objects"}"#).unwrap();
        assert!(empty.items.is_empty());
    }

    #[test]
    fn emulator_host() {
        let env: Env = [("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")]
            .into_iter()
            .collect();
        assert_eq!(base(&env).unwrap().as_str(), "http://127.0.0.1:9023/");
        assert_eq!(
            base(&Env::default()).unwrap().as_str(),
            "https://storage.googleapis.com/"
        );
    }
}
