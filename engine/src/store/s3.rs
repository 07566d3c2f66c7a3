//! `s3://bucket/prefix` (or an exact key): Amazon S3 and S3-compatible stores.
//!
//! One file, longer than most: listing, the checksum HEADs, addressing styles and signing are
//! one protocol whose parts share the same settings and error mapping.
//!
//! Listing is ListObjectsV2, page by page; each object then gets a HEAD with
//! `x-amz-checksum-mode: ENABLED` (16 in flight) to learn the checksum S3 keeps for it. The
//! digest verified is the first of: a full-object `x-amz-checksum-crc64nvme`, `-crc32c`,
//! `-crc32`, `-sha256`, `-sha1`; else the ETag as md5 when the object is single-part and not
//! KMS- or customer-key-encrypted (only then is the ETag an md5); else the size alone. The
//! report names which. Composite (per-part) checksums cannot be checked against the whole
//! file and are not used.
//!
//! Every request is signed with SigV4 (`aws-sigv4`) at the moment it is sent, with the
//! credentials of that moment, so long pulls never carry stale signatures or expired
//! temporary keys. Settings come from the variables KServe's storage-initializer and
//! credential builder use; see [`Settings::from_env`]. Without static keys the credentials
//! come from the AWS SDKs' default chain ([`super::aws_auth`]).

use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use url::Url;

use super::aws_auth::{Keys, Provider};
use super::control::{self, Control, Reply};
use super::env::Env;
use super::filter::Patterns;
use super::{Manifest, base64_digest, encode};
use crate::CaBundle;
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::http::{Client, Request};
use crate::target::{Auth, Authorize, Target};

/// HEADs in flight while collecting checksums.
const HEAD_WIDTH: usize = 16;

/// How to reach the store and who to be.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `scheme://host[:port]` of the endpoint.
    pub endpoint: Url,
    pub region: String,
    /// Virtual-hosted (`bucket.host/key`) instead of path-style (`host/bucket/key`).
    pub virtual_hosted: bool,
    /// `awsAnonymousCredential=true`: requests go unsigned, whatever credentials are set.
    pub anonymous: bool,
    /// Where the signing credentials come from; `None` when anonymous, or when no source was
    /// found, which [`list`] refuses unless anonymous access was asked for.
    pub credentials: Option<Provider>,
    pub ca_bundle: Option<CaBundle>,
    pub verify_tls: bool,
}

impl Settings {
    /// Reads `AWS_ENDPOINT_URL` (else `S3_ENDPOINT` with `S3_USE_HTTPS`, else AWS's regional
    /// endpoint), `AWS_REGION`/`AWS_DEFAULT_REGION` (default `us-east-1`),
    /// `S3_USER_VIRTUAL_BUCKET`, `awsAnonymousCredential` (`true`, any case, as KServe reads
    /// it: unsigned requests), `S3_VERIFY_SSL`, `AWS_CA_BUNDLE` (a file) or
    /// `AWS_CA_BUNDLE_PEM` (the same in memory, as the agent hands over a ConfigMap's
    /// bundle; it wins); the credentials are
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, else the next
    /// source of the default chain ([`Provider::from_env`]).
    pub fn from_env(env: &Env) -> Result<Self> {
        let region = env
            .first(&["AWS_REGION", "AWS_DEFAULT_REGION"])
            .unwrap_or("us-east-1")
            .to_owned();
        let custom = env.get("AWS_ENDPOINT_URL").map(str::to_owned).or_else(|| {
            env.get("S3_ENDPOINT").map(|host| {
                // As KServe's credential builder: a scheme wins, else only `0` means http.
                if host.contains("://") {
                    host.to_owned()
                } else {
                    let http = env.get("S3_USE_HTTPS").is_some_and(|v| v.trim() == "0");
                    format!("{}://{host}", if http { "http" } else { "https" })
                }
            })
        });
        let endpoint_text = custom
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = Url::parse(&endpoint_text).map_err(|e| {
            Error::InvalidOption(format!("S3 endpoint `{endpoint_text}` is not a URL: {e}"))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(Error::InvalidOption(format!(
                "S3 endpoint `{endpoint_text}` must be an http(s) URL with a host"
            )));
        }
        // As boto3: AWS's own endpoints are virtual-hosted, custom endpoints (MinIO, Ceph)
        // path-style, unless S3_USER_VIRTUAL_BUCKET says otherwise. The legacy global
        // endpoint with another region must be virtual-hosted to avoid a redirect.
        let legacy_global =
            custom.as_deref() == Some("https://s3.amazonaws.com") && region != "us-east-1";
        let virtual_hosted = env
            .flag("S3_USER_VIRTUAL_BUCKET")
            .unwrap_or(custom.is_none())
            || legacy_global;
        // KServe's storage-initializer: `"true" == os.getenv("awsAnonymousCredential").lower()`.
        let anonymous = env
            .get("awsAnonymousCredential")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let credentials = if anonymous {
            None
        } else {
            Provider::from_env(env, is_aws(&endpoint)).map_err(Error::InvalidOption)?
        };
        Ok(Self {
            endpoint,
            region,
            virtual_hosted,
            anonymous,
            credentials,
            ca_bundle: env
                .get("AWS_CA_BUNDLE_PEM")
                .map(|pem| CaBundle::Pem {
                    origin: "AWS_CA_BUNDLE_PEM".into(),
                    pem: pem.into(),
                })
                .or_else(|| env.get("AWS_CA_BUNDLE").map(|p| CaBundle::File(p.into()))),
            // KServe turns verification off for exactly these two values.
            verify_tls: !env
                .get("S3_VERIFY_SSL")
                .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false")),
        })
    }

    /// The signer for this store's requests, fetching its credentials over `control`.
    pub fn signer(&self, control: &Control) -> Option<SigV4> {
        let keys = self.credentials.clone()?.keys(control);
        Some(SigV4 {
            keys,
            region: self.region.clone(),
        })
    }

    /// The URL of `key` in `bucket` (the bucket's root for an empty key).
    fn object_url(&self, bucket: &str, key: &str) -> Result<Url> {
        let mut url = self.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        if self.virtual_hosted {
            let host = format!("{bucket}.{}", self.endpoint.host_str().unwrap_or_default());
            url.set_host(Some(&host)).map_err(|e| {
                Error::InvalidOption(format!("bucket `{bucket}` cannot be a host name: {e}"))
            })?;
            url.set_path(&format!("{base}/{}", encode(key, true)));
        } else {
            url.set_path(&format!(
                "{base}/{}/{}",
                encode(bucket, false),
                encode(key, true)
            ));
        }
        url.set_query(None);
        Ok(url)
    }
}

/// AWS's own endpoints (`*.amazonaws.com`, `*.amazonaws.com.cn`, VPC endpoints included),
/// where an EC2 instance role's credentials are any good.
fn is_aws(endpoint: &Url) -> bool {
    endpoint.host_str().is_some_and(|h| {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        h.ends_with(".amazonaws.com") || h.ends_with(".amazonaws.com.cn")
    })
}

/// SigV4 request signing for S3, with the credentials of the moment.
#[derive(Debug, Clone)]
pub struct SigV4 {
    keys: Keys,
    region: String,
}

impl SigV4 {
    /// Where the credentials come from, for messages.
    pub fn describe(&self) -> String {
        self.keys.describe()
    }

    /// The headers that sign `method url` with `extra` headers (which must be sent too).
    /// A source with nothing to give (no instance metadata service answered, or the instance
    /// has no role) is a refusal, as boto3's `NoCredentialsError`: never an unsigned request.
    pub fn sign(
        &self,
        method: &str,
        url: &Url,
        extra: &[(String, String)],
    ) -> std::result::Result<Vec<(String, String)>, String> {
        let Some(creds) = self.keys.current()? else {
            return Err(format!(
                "no AWS credentials found: {} gave none (no instance metadata service \
                 answered, or the instance has no IAM role); set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY or another source, or awsAnonymousCredential=true to \
                 send the requests unsigned (a public bucket)",
                self.keys.describe()
            ));
        };
        let identity = creds.identity();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("SigV4 parameters: {e}"))?
            .into();
        let signable = SignableRequest::new(
            method,
            url.as_str(),
            extra.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| format!("cannot sign a request to {}: {e}", crate::redact(url)))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("SigV4 signing failed: {e}"))?
            .into_parts();
        let mut headers: Vec<(String, String)> = extra.to_vec();
        headers.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        Ok(headers)
    }
}

impl Authorize for SigV4 {
    fn headers(
        &self,
        method: &str,
        url: &Url,
    ) -> std::result::Result<Vec<(String, String)>, String> {
        self.sign(method, url, &[])
    }
}

/// Bucket and key (or prefix) of an `s3://` URI.
fn parse(uri: &str) -> Result<(String, String)> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| Error::InvalidSource {
            input: uri.to_owned(),
            reason: "not an s3:// URI".into(),
        })?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = (3..=255).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(Error::InvalidSource {
            input: uri.to_owned(),
            reason: format!("`{bucket}` is not a valid bucket name"),
        });
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub(crate) key: String,
    pub(crate) size: u64,
    etag: String,
}

/// One ListObjectsV2 page.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) objects: Vec<Object>,
    pub(crate) next: Option<String>,
}

pub(crate) fn parse_page(xml: &[u8]) -> std::result::Result<Page, String> {
    let text = std::str::from_utf8(xml).map_err(|_| "the listing is not UTF-8".to_owned())?;
    let doc =
        roxmltree::Document::parse(text).map_err(|e| format!("the listing is not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListBucketResult" {
        return Err(format!(
            "unexpected listing root <{}>",
            root.tag_name().name()
        ));
    }
    let child = |node: roxmltree::Node<'_, '_>, name: &str| {
        node.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::to_owned)
    };
    let url_encoded = child(root, "EncodingType").is_some_and(|e| e == "url");
    let mut page = Page::default();
    for c in root
        .children()
        .filter(|c| c.tag_name().name() == "Contents")
    {
        let raw = child(c, "Key").ok_or("a listing entry has no Key")?;
        let key = if url_encoded {
            percent_encoding::percent_decode_str(&raw.replace('+', " "))
                .decode_utf8()
                .map_err(|_| format!("key `{raw}` is not UTF-8"))?
                .into_owned()
        } else {
            raw
        };
        let size = child(c, "Size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("key `{}` has no valid Size", key.escape_debug()))?;
        page.objects.push(Object {
            key,
            size,
            etag: child(c, "ETag").unwrap_or_default(),
        });
    }
    if child(root, "IsTruncated").is_some_and(|t| t == "true") {
        page.next = Some(
            child(root, "NextContinuationToken")
                .ok_or("the listing is truncated but has no NextContinuationToken")?,
        );
    }
    Ok(page)
}

/// `Code: Message` of an S3 error body.
fn error_text(reply: &Reply) -> String {
    let text = String::from_utf8_lossy(&reply.body);
    let parsed = roxmltree::Document::parse(&text).ok().and_then(|doc| {
        let find = |n: &str| {
            doc.descendants()
                .find(|d| d.tag_name().name() == n)
                .and_then(|d| d.text())
                .map(str::to_owned)
        };
        Some(match (find("Code")?, find("Message")) {
            (code, Some(msg)) => format!("{code}: {msg}"),
            (code, None) => code,
        })
    });
    parsed.unwrap_or_else(|| match reply.snippet() {
        s if s.is_empty() => "no details given".into(),
        s => s,
    })
}

struct Ctx<'a> {
    uri: &'a str,
    bucket: &'a str,
    settings: &'a Settings,
    signer: Option<&'a SigV4>,
}

impl Ctx<'_> {
    async fn send(
        &self,
        client: &Client,
        method: &str,
        url: &Url,
        extra: &[(String, String)],
    ) -> Result<Reply> {
        let headers = match self.signer {
            Some(s) => s.sign(method, url, extra).map_err(|message| Error::Auth {
                uri: self.uri.to_owned(),
                message,
            })?,
            None => extra.to_vec(),
        };
        let req = Request {
            method,
            headers: &headers,
            ..Request::get(url)
        };
        control::fetch(client, &req)
            .await
            .map_err(|e| Error::Store {
                uri: self.uri.to_owned(),
                message: format!("request to the S3 endpoint failed: {e}"),
            })
    }

    /// Turns a failed reply into an error that says what to do.
    fn failure(&self, reply: &Reply, what: &str) -> Error {
        let detail = error_text(reply);
        let status = reply.status();
        let uri = self.uri.to_owned();
        let code = detail.split(':').next().unwrap_or_default();
        let credential_codes = [
            "InvalidToken",
            "ExpiredToken",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AuthorizationHeaderMalformed",
        ];
        if status == 401 || status == 403 || credential_codes.contains(&code) {
            let hint = match self.signer {
                None => "no credentials were given: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the pod an AWS identity (IRSA, EKS Pod Identity, an instance role)".to_owned(),
                Some(s) => format!(
                    "check the credentials ({}) and the bucket policy",
                    s.describe()
                ),
            };
            return Error::Auth {
                uri,
                message: format!("{what}: HTTP {status} ({detail}); {hint}"),
            };
        }
        if matches!(status, 301 | 307 | 400)
            && let Some(region) = reply.header("x-amz-bucket-region")
        {
            return Error::Store {
                uri,
                message: format!(
                    "bucket `{}` is in region {region}, not {}: set AWS_REGION={region}",
                    self.bucket, self.settings.region
                ),
            };
        }
        if status == 404 && detail.starts_with("NoSuchBucket") {
            return Error::Store {
                uri,
                message: format!("bucket `{}` does not exist ({detail})", self.bucket),
            };
        }
        Error::Store {
            uri,
            message: format!("{what}: HTTP {status} ({detail})"),
        }
    }

    async fn list(&self, client: &Client, prefix: &str) -> Result<Vec<Object>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = super::Pages::default();
        let root = self.settings.object_url(self.bucket, "")?;
        loop {
            let mut query = format!(
                "list-type=2&encoding-type=url&prefix={}",
                encode(prefix, false)
            );
            if let Some(t) = &token {
                query.push_str(&format!("&continuation-token={}", encode(t, false)));
            }
            let mut url = root.clone();
            url.set_query(Some(&query));
            let reply = self.send(client, "GET", &url, &[]).await?;
            if reply.status() != 200 {
                return Err(self.failure(&reply, "listing the bucket failed"));
            }
            let page = parse_page(&reply.body).map_err(|message| Error::Store {
                uri: self.uri.to_owned(),
                message,
            })?;
            out.extend(page.objects);
            match page.next {
                Some(t) => {
                    pages.next(&t).map_err(|message| Error::Store {
                        uri: self.uri.to_owned(),
                        message,
                    })?;
                    token = Some(t);
                }
                None => return Ok(out),
            }
        }
    }

    /// HEAD with checksums enabled: the digest to verify and a label saying which.
    async fn checksum(&self, client: &Client, obj: &Object) -> Result<(Option<Digest>, String)> {
        let url = self.settings.object_url(self.bucket, &obj.key)?;
        let extra = [("x-amz-checksum-mode".to_owned(), "ENABLED".to_owned())];
        let reply = self.send(client, "HEAD", &url, &extra).await?;
        if reply.status() != 200 {
            return Err(self.failure(&reply, &format!("HEAD of `{}` failed", obj.key)));
        }
        Ok(pick_checksum(&reply.head, &obj.etag))
    }
}

/// The best digest a HEAD response offers for the whole object.
fn pick_checksum(
    head: &crate::http::head::ResponseHead,
    listed_etag: &str,
) -> (Option<Digest>, String) {
    let etag = head
        .etag
        .as_deref()
        .unwrap_or(listed_etag)
        .trim_matches('"')
        .to_owned();
    let multipart = etag.contains('-');
    let composite = head
        .header("x-amz-checksum-type")
        .is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE"));
    let full_object = head
        .header("x-amz-checksum-type")
        .is_some_and(|t| t.eq_ignore_ascii_case("FULL_OBJECT"));
    for (name, algorithm) in [
        ("x-amz-checksum-crc64nvme", Algorithm::Crc64nvme),
        ("x-amz-checksum-crc32c", Algorithm::Crc32c),
        ("x-amz-checksum-crc32", Algorithm::Crc32),
        ("x-amz-checksum-sha256", Algorithm::Sha256),
        ("x-amz-checksum-sha1", Algorithm::Sha1),
    ] {
        let Some(value) = head.header(name) else {
            continue;
        };
        // A multipart object's checksum is per part unless S3 says it is full-object;
        // crc64nvme is always full-object.
        let per_part = composite
            || value.contains('-')
            || (multipart && !full_object && algorithm != Algorithm::Crc64nvme);
        if per_part {
            continue;
        }
        if let Some(d) = base64_digest(algorithm, value) {
            return (Some(d), name.to_owned());
        }
    }
    let encrypted_with_key = head
        .header("x-amz-server-side-encryption")
        .is_some_and(|v| v.starts_with("aws:kms"))
        || head
            .header("x-amz-server-side-encryption-customer-algorithm")
            .is_some();
    if !multipart
        && !encrypted_with_key
        && let Ok(d) = Digest::from_hex(Algorithm::Md5, &etag)
    {
        return (Some(d), "etag (md5)".into());
    }
    (None, "size only".into())
}

pub fn list(uri: &str, env: &Env, control: &Control, patterns: &Patterns) -> Result<Manifest> {
    let (bucket, key) = parse(uri)?;
    super::check_object_path(uri, &key)?;
    let settings = Settings::from_env(env)?;
    if settings.credentials.is_none() && !settings.anonymous {
        return Err(Error::Auth {
            uri: uri.to_owned(),
            message: super::aws_auth::nothing_found(env, is_aws(&settings.endpoint)),
        });
    }
    let insecure_hosts = if settings.verify_tls {
        Vec::new()
    } else {
        let object_host = settings
            .object_url(&bucket, "")?
            .host_str()
            .unwrap_or_default()
            .to_owned();
        tracing::warn!(host = %object_host, "S3_VERIFY_SSL is off: the S3 endpoint's TLS certificate is not verified");
        vec![object_host]
    };
    let control = control.with_tls(settings.ca_bundle.as_ref(), &insecure_hosts)?;
    // One signer for the listing and every download: one credential cache, renewed once.
    let signer = settings.signer(&control);
    let ctx_signer = signer.clone();
    let ctx_settings = settings.clone();
    let (bucket_c, key_c, uri_c) = (bucket.clone(), key.clone(), uri.to_owned());
    let (listed, skipped) = control.run(move |client| async move {
        let ctx = Ctx {
            uri: &uri_c,
            bucket: &bucket_c,
            settings: &ctx_settings,
            signer: ctx_signer.as_ref(),
        };
        // An exact key wins, as in KServe; otherwise the key is a folder.
        let folder = if key_c.is_empty() || key_c.ends_with('/') {
            key_c.clone()
        } else {
            format!("{key_c}/")
        };
        let mut chosen: Vec<(Object, String)> = Vec::new();
        if !key_c.is_empty() && !key_c.ends_with('/') {
            let candidates = ctx.list(&client, &key_c).await?;
            if let Some(exact) = candidates
                .into_iter()
                .find(|o| o.key == key_c && o.size > 0)
            {
                let name = key_c.rsplit('/').next().unwrap_or(&key_c).to_owned();
                chosen.push((exact, name));
            }
        }
        let mut skipped = 0usize;
        if chosen.is_empty() {
            for obj in ctx.list(&client, &folder).await? {
                let rel = obj
                    .key
                    .strip_prefix(folder.as_str())
                    .unwrap_or(&obj.key)
                    .to_owned();
                if obj.key.ends_with('/')
                    || obj.size == 0
                    || rel.is_empty()
                    || !patterns.keeps(&rel)
                {
                    skipped += 1;
                    continue;
                }
                chosen.push((obj, rel));
            }
        }
        // Hostile names are refused before anything else is asked of the server.
        let preview = chosen
            .iter()
            .map(|(obj, rel)| {
                Ok(Target {
                    url: ctx_settings.object_url(&bucket_c, &obj.key)?,
                    path: rel.clone(),
                    expected: Vec::new(),
                    size: Some(obj.size),
                    checksum: None,
                    auth: Auth::default(),
                    mirrors: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        super::check_listing(&uri_c, &preview)?;
        let client2 = client.clone();
        let settings2 = ctx_settings.clone();
        let signer2 = ctx_signer.clone();
        let (uri2, bucket2) = (uri_c.clone(), bucket_c.clone());
        let checked = control::for_each(chosen, HEAD_WIDTH, move |(obj, rel)| {
            let (client, settings, signer, uri, bucket) = (
                client2.clone(),
                settings2.clone(),
                signer2.clone(),
                uri2.clone(),
                bucket2.clone(),
            );
            async move {
                let ctx = Ctx {
                    uri: &uri,
                    bucket: &bucket,
                    settings: &settings,
                    signer: signer.as_ref(),
                };
                let (digest, label) = ctx.checksum(&client, &obj).await?;
                Ok((obj, rel, digest, label))
            }
        })
        .await?;
        Ok::<_, Error>((checked, skipped))
    })??;

    let auth = signer.map_or_else(Auth::default, Auth::new);
    let mut files = Vec::new();
    for (obj, rel, digest, label) in listed {
        files.push(Target {
            url: settings.object_url(&bucket, &obj.key)?,
            path: rel,
            expected: digest.into_iter().collect(),
            size: Some(obj.size),
            checksum: Some(label),
            auth: auth.clone(),
            mirrors: Vec::new(),
        });
    }
    Ok(Manifest {
        uri: uri.to_owned(),
        store: "s3",
        revision: None,
        files,
        skipped,
        ca_bundle: settings.ca_bundle.clone(),
        insecure_hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter().copied().collect()
    }

    #[test]
    fn endpoints_and_addressing() {
        let aws = Settings::from_env(&env(&[("AWS_REGION", "eu-west-1")])).unwrap();
        assert_eq!(
            aws.object_url("models", "llama/a b.bin").unwrap().as_str(),
            "https://models.s3.eu-west-1.amazonaws.com/llama/a%20b.bin"
        );
        let minio = Settings::from_env(&env(&[
            ("S3_ENDPOINT", "minio:9000"),
            ("S3_USE_HTTPS", "0"),
        ]))
        .unwrap();
        assert_eq!(
            minio.object_url("models", "x+y/z").unwrap().as_str(),
            "http://minio:9000/models/x%2By/z"
        );
        // As KServe's builder: only `0` means http; a scheme in the endpoint wins.
        for (use_https, scheme) in [("false", "https"), ("1", "https"), ("0", "http")] {
            let s = Settings::from_env(&env(&[
                ("S3_ENDPOINT", "minio:9000"),
                ("S3_USE_HTTPS", use_https),
            ]))
            .unwrap();
            assert_eq!(s.endpoint.as_str(), format!("{scheme}://minio:9000/"));
        }
        let schemed = Settings::from_env(&env(&[
            ("S3_ENDPOINT", "http://minio:9000"),
            ("S3_USE_HTTPS", "1"),
        ]))
        .unwrap();
        assert_eq!(schemed.endpoint.as_str(), "http://minio:9000/");
        let virt = Settings::from_env(&env(&[
            ("AWS_ENDPOINT_URL", "http://localhost:5055"),
            ("S3_USER_VIRTUAL_BUCKET", "true"),
        ]))
        .unwrap();
        assert_eq!(
            virt.object_url("models", "k").unwrap().as_str(),
            "http://models.localhost:5055/k"
        );
        let legacy = Settings::from_env(&env(&[
            ("AWS_ENDPOINT_URL", "https://s3.amazonaws.com"),
            ("AWS_DEFAULT_REGION", "us-west-2"),
        ]))
        .unwrap();
        assert!(legacy.virtual_hosted);
        assert!(Settings::from_env(&env(&[("AWS_ACCESS_KEY_ID", "a")])).is_err());
        assert!(Settings::from_env(&env(&[("AWS_ENDPOINT_URL", "ftp://x")])).is_err());
        let anon = Settings::from_env(&env(&[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("awsAnonymousCredential", "true"),
        ]))
        .unwrap();
        assert!(anon.anonymous && anon.credentials.is_none());
        let not_anon = Settings::from_env(&env(&[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("awsAnonymousCredential", "1"),
        ]))
        .unwrap();
        assert!(
            !not_anon.anonymous && not_anon.credentials.is_some(),
            "KServe's storage-initializer takes only `true`"
        );
        assert!(
            !Settings::from_env(&env(&[("S3_VERIFY_SSL", "0")]))
                .unwrap()
                .verify_tls
        );
        assert!(
            !Settings::from_env(&env(&[("S3_VERIFY_SSL", "false")]))
                .unwrap()
                .verify_tls
        );
        assert!(Settings::from_env(&env(&[])).unwrap().verify_tls);
    }

    #[test]
    fn signing_covers_the_right_headers() {
        let s = Settings::from_env(&env(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
            ("AWS_SESSION_TOKEN", "session-token"),
        ]))
        .unwrap();
        let control = Control::new(&crate::Options::default().client()).unwrap();
        let signer = s.signer(&control).unwrap();
        let url = Url::parse("https://b.s3.us-east-1.amazonaws.com/k").unwrap();
        let extra = [("x-amz-checksum-mode".to_owned(), "ENABLED".to_owned())];
        let h = signer.sign("HEAD", &url, &extra).unwrap();
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
        let auth = get("authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
        assert!(auth.contains("/us-east-1/s3/aws4_request"));
        assert!(auth.contains("x-amz-checksum-mode"));
        assert!(auth.contains("x-amz-security-token"));
        assert_eq!(get("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(get("x-amz-security-token"), Some("session-token"));
        assert!(!format!("{signer:?}").contains("wJalr"));
    }

    #[test]
    fn listing_pages() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>m/</Prefix>
<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken>
<Contents><Key>m/a%20b.bin</Key><Size>5</Size><ETag>&quot;5d41402abc4b2a76b9719d911017c592&quot;</ETag></Contents>
<Contents><Key>m/dir/</Key><Size>0</Size><ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag></Contents>
</ListBucketResult>"#;
        let page = parse_page(xml).unwrap();
        assert_eq!(page.objects.len(), 2);
        assert_eq!(page.objects[0].key, "m/a b.bin");
        assert_eq!(page.objects[0].etag, "\"5d41402abc4b2a76b9719d911017c592\"");
        assert_eq!(page.next.as_deref(), Some("tok"));
        assert!(parse_page(b"<Error><Code>AccessDenied</Code></Error>").is_err());
        assert!(
            parse_page(b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>")
                .is_err()
        );
        assert!(parse_page(b"not xml").is_err());
    }

    fn head(headers: &[(&str, &str)], etag: &str) -> crate::http::head::ResponseHead {
        crate::http::head::ResponseHead {
            status: 200,
            etag: Some(etag.to_owned()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn checksum_choice() {
        let md5 = "\"5d41402abc4b2a76b9719d911017c592\"";
        let (d, label) = pick_checksum(
            &head(&[("x-amz-checksum-crc64nvme", "D3gOhIHSoh8=")], md5),
            md5,
        );
        assert_eq!(
            (d.unwrap().algorithm, label.as_str()),
            (Algorithm::Crc64nvme, "x-amz-checksum-crc64nvme")
        );
        let (d, label) = pick_checksum(&head(&[], md5), md5);
        assert_eq!(
            (d.unwrap().algorithm, label.as_str()),
            (Algorithm::Md5, "etag (md5)")
        );
        let multi = "\"fdd3f8f29045d7454477dd634c8cd8cb-2\"";
        // Composite per-part checksums, whether or not the server marks them.
        for h in [
            vec![("x-amz-checksum-crc32", "0+9Hrw==-2")],
            vec![("x-amz-checksum-crc32", "0+9Hrw==")],
            vec![
                ("x-amz-checksum-crc32", "0+9Hrw=="),
                ("x-amz-checksum-type", "COMPOSITE"),
            ],
        ] {
            let (d, label) = pick_checksum(&head(&h, multi), multi);
            assert!(d.is_none());
            assert_eq!(label, "size only");
        }
        let (d, _) = pick_checksum(
            &head(
                &[
                    ("x-amz-checksum-crc32", "0+9Hrw=="),
                    ("x-amz-checksum-type", "FULL_OBJECT"),
                ],
                multi,
            ),
            multi,
        );
        assert_eq!(d.unwrap().algorithm, Algorithm::Crc32);
        let (d, _) = pick_checksum(
            &head(&[("x-amz-server-side-encryption", "aws:kms")], md5),
            md5,
        );
        assert!(d.is_none());
    }

    #[test]
    fn uris() {
        assert_eq!(
            parse("s3://bucket/a/b").unwrap(),
            ("bucket".into(), "a/b".into())
        );
        assert_eq!(parse("s3://bucket").unwrap(), ("bucket".into(), "".into()));
        for bad in ["s3://", "s3://ab/x", "s3://b@d/x", "s3:/x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
