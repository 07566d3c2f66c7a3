//! Credentials for a model, found exactly where KServe's credential builder finds them for a
//! download Job (`pkg/credentials`, reference §5), always in the job namespace, and only for
//! an entry that names a ServiceAccount or a storage spec:
//!
//! - `storage.key` set: that key of the `storage-config` Secret (`storageSpecSecretName`), a
//!   JSON spec with the entry's parameters laid over it;
//! - otherwise the Secrets of the entry's ServiceAccount, or of `default` when it names none.
//!   A ServiceAccount with the IRSA annotation (`eks.amazonaws.com/role-arn`) first gives the
//!   S3 settings of its own `serving.kserve.io/s3-*` annotations. Each Secret then counts as
//!   the first kind whose key it holds: S3 (the `credentials.s3` secret-key name), GCS, Azure,
//!   an https host's headers, HDFS, Hugging Face, ModelScope. Every S3 setting comes from the
//!   Secret's annotation, else its data, else `credentials.s3`, and the endpoint is written
//!   with or without its scheme as the builder writes it.
//!
//! KServe turns these into environment variables of a download pod; here they become an
//! in-memory [`Env`] handed to the engine, with the same variable names, so the stores read
//! them exactly as the storage-initializer would. A CA bundle KServe would mount from a
//! ConfigMap (`s3-cabundle-configmap`, a storage spec's `cabundle_configmap`) is read from the
//! job namespace and handed over in memory too (`AWS_CA_BUNDLE_PEM`). Nothing is logged or
//! written to disk.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::Api;
use modelpull::store::Env;

use crate::config::{CredentialConfig, S3Config};
use crate::crd::LocalModelInfo;

/// The annotation that marks a ServiceAccount for IRSA.
const IRSA_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The ConfigMap key of a CA bundle when `AWS_CA_BUNDLE` does not name another file.
const CA_BUNDLE_KEY: &str = "cabundle.crt";

/// Each S3 setting: its annotation, the Secret data key (and variable) it becomes, and its
/// `credentials.s3` field. The endpoint and `S3_USE_HTTPS` are composed apart.
fn s3_settings(cfg: &S3Config) -> [(&'static str, &'static str, &str); 7] {
    [
        (
            "serving.kserve.io/s3-verifyssl",
            "S3_VERIFY_SSL",
            &cfg.verify_ssl,
        ),
        (
            "serving.kserve.io/s3-useanoncredential",
            "awsAnonymousCredential",
            &cfg.use_anonymous_credential,
        ),
        (
            "serving.kserve.io/s3-region",
            "AWS_DEFAULT_REGION",
            &cfg.region,
        ),
        (
            "serving.kserve.io/s3-usevirtualbucket",
            "S3_USER_VIRTUAL_BUCKET",
            &cfg.use_virtual_bucket,
        ),
        (
            "serving.kserve.io/s3-useaccelerate",
            "S3_USE_ACCELERATE",
            &cfg.use_accelerate,
        ),
        (
            "serving.kserve.io/s3-cabundle",
            "AWS_CA_BUNDLE",
            &cfg.ca_bundle,
        ),
        (
            "serving.kserve.io/s3-cabundle-configmap",
            "AWS_CA_BUNDLE_CONFIGMAP",
            &cfg.ca_bundle_configmap,
        ),
    ]
}

/// Which credentials a download uses, by name only (never a value): the Events of a refused
/// download say which Secret or ServiceAccount to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The entry names neither a storage key nor a ServiceAccount: none of its own (an S3
    /// store then takes the agent's own identity from the AWS default chain, or refuses unless
    /// anonymous access is configured, as boto3 in KServe's Jobs).
    Anonymous,
    /// A key of the storage-config Secret.
    StorageSpec {
        namespace: String,
        secret: String,
        key: String,
    },
    /// The Secrets of a ServiceAccount (the names of those that exist).
    ServiceAccount {
        namespace: String,
        name: String,
        secrets: Vec<String>,
    },
    /// The entry names a ServiceAccount that does not exist: none of its own, as KServe's.
    MissingServiceAccount { namespace: String, name: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Anonymous => {
                f.write_str("no credentials (the entry names no ServiceAccount and no storage key)")
            }
            Source::StorageSpec {
                namespace,
                secret,
                key,
            } => write!(f, "key `{key}` of Secret {namespace}/{secret}"),
            Source::ServiceAccount {
                namespace,
                name,
                secrets,
            } if secrets.is_empty() => {
                write!(
                    f,
                    "ServiceAccount {namespace}/{name}, which names no Secret that exists"
                )
            }
            Source::ServiceAccount {
                namespace,
                name,
                secrets,
            } => write!(
                f,
                "ServiceAccount {namespace}/{name} (Secrets {})",
                secrets.join(", ")
            ),
            Source::MissingServiceAccount { namespace, name } => write!(
                f,
                "no credentials (ServiceAccount {namespace}/{name} does not exist)"
            ),
        }
    }
}

/// A model's environment and where its credentials came from.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub env: Env,
    pub source: Source,
}

/// Why a model's credentials could not be read. Every variant names the object, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} does not exist")]
    MissingSecret { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key `{key}`")]
    MissingKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secret {namespace}/{name} key `{key}`: {source}")]
    StorageSpec {
        namespace: String,
        name: String,
        key: String,
        #[source]
        source: StorageSpecError,
    },
    /// The CA bundle ConfigMap named by `AWS_CA_BUNDLE_CONFIGMAP` cannot be used.
    #[error("the CA bundle of ConfigMap {namespace}/{name}: {reason}")]
    CaBundle {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// Why a storage-config entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageSpecError {
    #[error("the storage-config entry is not a JSON object")]
    NotJson,
    #[error("the storage-config entry has no `type`")]
    NoType,
    #[error("storage type `{0}` is not supported (use s3 or hf)")]
    Unsupported(String),
}

/// A `storage-config` entry (JSON) with the entry's parameters laid over it, as the
/// storage-initializer's `STORAGE_CONFIG` + `STORAGE_OVERRIDE_CONFIG`; a `cabundle_configmap`
/// field becomes `AWS_CA_BUNDLE_CONFIGMAP`, as KServe's builder adds it.
pub fn from_storage_spec(
    json: &str,
    parameters: &BTreeMap<String, String>,
) -> Result<Env, StorageSpecError> {
    // The serde error is dropped: it may quote the Secret's bytes.
    let mut spec: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|_| StorageSpecError::NotJson)?;
    for (k, v) in parameters {
        spec.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let text = |k: &str| {
        spec.get(k).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let mut env = Env::default();
    match text("type").as_deref() {
        Some("s3") => {
            for (field, var) in modelpull::store::S3_STORAGE_SPEC {
                if let Some(v) = text(field) {
                    env.set(var, v);
                }
            }
            if let Some(name) = text("cabundle_configmap") {
                env.set("AWS_CA_BUNDLE_CONFIGMAP", name);
            }
        }
        // KServe's builder refuses `hf` though its docs show it; a token is all it needs.
        Some("hf") => {
            if let Some(token) = text("token").or_else(|| text("HF_TOKEN")) {
                env.set("HF_TOKEN", token);
            }
        }
        Some(other) => {
            return Err(StorageSpecError::Unsupported(
                other.escape_debug().to_string(),
            ));
        }
        None => return Err(StorageSpecError::NoType),
    }
    Ok(env)
}

/// A Secret's data key as text (`stringData` too, as the API server would have merged it).
fn data(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
        })
}

fn has(secret: &Secret, key: &str) -> bool {
    data(secret, key).is_some()
}

/// Lays the node's own settings (see [`crate::controller::NODE_ENV`]) under a model's `env`:
/// the model's own values win. When the pod's web identity token is handed over (the model
/// has none of its own), STS is pinned to the agent's own `AWS_ENDPOINT_URL_STS`, else AWS's
/// STS of the model's region: otherwise STS would follow the model's `AWS_ENDPOINT_URL`, and
/// the node's token would go to every MinIO or Ceph endpoint a keyless model names.
pub fn inherit(env: &mut Env, node_env: &Env) {
    let node_token = env.get("AWS_WEB_IDENTITY_TOKEN_FILE").is_none()
        && node_env.get("AWS_WEB_IDENTITY_TOKEN_FILE").is_some();
    for (name, value) in node_env.iter() {
        if env.get(name).is_none() {
            env.set(name, value);
        }
    }
    if node_token {
        let sts = match node_env.get("AWS_ENDPOINT_URL_STS") {
            Some(own) => own.to_owned(),
            None => aws_sts(env.first(&["AWS_REGION", "AWS_DEFAULT_REGION"])),
        };
        env.set("AWS_ENDPOINT_URL_STS", sts);
    }
}

/// AWS's STS endpoint of `region` (its partition's for China), else the global one.
fn aws_sts(region: Option<&str>) -> String {
    match region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(region) if region.starts_with("cn-") => {
            format!("https://sts.{region}.amazonaws.com.cn")
        }
        Some(region) => format!("https://sts.{region}.amazonaws.com"),
        None => "https://sts.amazonaws.com".into(),
    }
}

/// The S3 variables from `annotations`, then `secret` data, then `cfg`, exactly as KServe's
/// `BuildS3EnvVars`: an annotation or data key that is present wins even when empty, and a
/// variable whose value ends up empty is not set. An endpoint with a scheme decides
/// `S3_USE_HTTPS` and loses the scheme in `S3_ENDPOINT`; without one, `S3_USE_HTTPS=0` alone
/// makes `AWS_ENDPOINT_URL` http.
pub fn s3_env(
    annotations: &BTreeMap<String, String>,
    secret: Option<&Secret>,
    cfg: &S3Config,
) -> Vec<(&'static str, String)> {
    let value = |annotation: &str, key: &str, configured: &str| -> String {
        if let Some(v) = annotations.get(annotation) {
            return v.clone();
        }
        if let Some(v) = secret.and_then(|s| data(s, key)) {
            return v;
        }
        configured.to_owned()
    };
    let mut out = Vec::new();
    let endpoint = value(
        "serving.kserve.io/s3-endpoint",
        "S3_ENDPOINT",
        &cfg.endpoint,
    );
    let endpoint = endpoint.trim();
    if !endpoint.is_empty() {
        let lower = endpoint.to_ascii_lowercase();
        let (use_https, host, url) = if lower.starts_with("https://") {
            ("1".to_owned(), &endpoint[8..], endpoint.to_owned())
        } else if lower.starts_with("http://") {
            ("0".to_owned(), &endpoint[7..], endpoint.to_owned())
        } else {
            let use_https = value(
                "serving.kserve.io/s3-usehttps",
                "S3_USE_HTTPS",
                &cfg.use_https,
            );
            let scheme = if use_https == "0" { "http" } else { "https" };
            (use_https, endpoint, format!("{scheme}://{endpoint}"))
        };
        if !use_https.is_empty() {
            out.push(("S3_USE_HTTPS", use_https));
        }
        out.push(("S3_ENDPOINT", host.to_owned()));
        out.push(("AWS_ENDPOINT_URL", url));
    }
    for (annotation, var, configured) in s3_settings(cfg) {
        let v = value(annotation, var, configured);
        if !v.is_empty() {
            out.push((var, v));
        }
    }
    out
}

/// What a ServiceAccount and its Secrets (in its order) provide, as KServe's builder reads
/// them: the IRSA annotation's S3 settings first, then each Secret as the first kind whose
/// key it holds, a later value replacing an earlier one.
pub fn from_service_account(
    account_annotations: &BTreeMap<String, String>,
    secrets: &[Secret],
    cfg: &CredentialConfig,
) -> Env {
    let mut env = Env::default();
    if account_annotations.contains_key(IRSA_ANNOTATION) {
        for (var, value) in s3_env(account_annotations, None, &cfg.s3) {
            env.set(var, value);
        }
    }
    for secret in secrets {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        if has(secret, cfg.s3.secret_access_key_key()) {
            // KServe refers to the access key ID by name; a Secret without it would stop the
            // pod from starting, here the engine refuses half a key pair.
            if let Some(id) = data(secret, cfg.s3.access_key_id_key()) {
                env.set("AWS_ACCESS_KEY_ID", id);
            }
            if let Some(key) = data(secret, cfg.s3.secret_access_key_key()) {
                env.set("AWS_SECRET_ACCESS_KEY", key);
            }
            let annotations = secret.metadata.annotations.clone().unwrap_or_default();
            for (var, value) in s3_env(&annotations, Some(secret), &cfg.s3) {
                env.set(var, value);
            }
        } else if let Some(json) = data(secret, cfg.gcs.credential_file_key()) {
            env.set("GOOGLE_APPLICATION_CREDENTIALS_JSON", json);
        } else if let Some(kind) = [
            ("AZ_CLIENT_ID", "Azure"),
            ("AZURE_CLIENT_ID", "Azure"),
            ("AZURE_ACCESS_TOKEN", "Azure"),
            ("AZURE_STORAGE_ACCESS_KEY", "Azure"),
        ]
        .into_iter()
        .find_map(|(key, kind)| has(secret, key).then_some(kind))
        {
            tracing::info!(secret = %name, "the Secret holds {kind} credentials, for a store modelpull does not read");
        } else if has(secret, "https-host") {
            if let (Some(host), Some(headers)) =
                (data(secret, "https-host"), data(secret, "headers"))
            {
                env.set(format!("{host}-headers"), headers);
            }
        } else if has(secret, "HDFS_NAMENODE") {
            tracing::info!(secret = %name, "the Secret holds HDFS settings, for a store modelpull does not read");
        } else if let Some(token) = data(secret, "HF_TOKEN") {
            env.set("HF_TOKEN", token);
        } else if let Some(token) = data(secret, "MODELSCOPE_API_TOKEN") {
            env.set("MODELSCOPE_API_TOKEN", token);
        } else {
            tracing::debug!(secret = %name, "the Secret holds no credentials KServe knows");
        }
    }
    env
}

/// The ConfigMap key of the CA bundle: the file `AWS_CA_BUNDLE` names (KServe mounts the
/// ConfigMap in that file's folder), else `cabundle.crt`.
fn ca_bundle_key(env: &Env) -> String {
    env.get("AWS_CA_BUNDLE")
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or(CA_BUNDLE_KEY)
        .to_owned()
}

/// The PEM text of a CA bundle ConfigMap's `key` (text or binary data).
fn ca_bundle_pem(cm: &ConfigMap, key: &str) -> Result<String, String> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(key).cloned())
        .or_else(|| {
            cm.binary_data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|ByteString(b)| String::from_utf8(b.clone()).ok())
        })
        .ok_or_else(|| format!("it has no key `{key}`"))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("key `{key}` holds no PEM certificate"));
    }
    Ok(text)
}

/// The environment for `entry`, read from the cluster. The process environment is not
/// inherited: a model gets only its own credentials (plus the node's proxy settings and
/// identity, which the caller adds).
pub async fn for_entry(
    client: &kube::Client,
    namespace: &str,
    entry: &LocalModelInfo,
    cfg: &CredentialConfig,
) -> Result<Credentials, CredentialError> {
    let mut credentials = lookup(client, namespace, entry, cfg).await?;
    if let Some(name) = credentials
        .env
        .get("AWS_CA_BUNDLE_CONFIGMAP")
        .map(str::to_owned)
    {
        let refused = |reason: String| CredentialError::CaBundle {
            namespace: namespace.to_owned(),
            name: name.clone(),
            reason,
        };
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let cm = maps
            .get_opt(&name)
            .await
            .map_err(|source| CredentialError::Read {
                kind: "ConfigMap",
                namespace: namespace.to_owned(),
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| refused("it does not exist".into()))?;
        let key = ca_bundle_key(&credentials.env);
        let pem = ca_bundle_pem(&cm, &key).map_err(refused)?;
        credentials.env.set("AWS_CA_BUNDLE_PEM", pem);
    }
    Ok(credentials)
}

async fn lookup(
    client: &kube::Client,
    namespace: &str,
    entry: &LocalModelInfo,
    cfg: &CredentialConfig,
) -> Result<Credentials, CredentialError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |kind, name: &str| {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        move |source| CredentialError::Read {
            kind,
            namespace,
            name,
            source,
        }
    };
    let named_account = entry
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty());
    // As KServe: credentials only for an entry that names a ServiceAccount or a storage spec.
    if named_account.is_none() && entry.storage.is_none() {
        return Ok(Credentials {
            env: Env::default(),
            source: Source::Anonymous,
        });
    }
    if let Some(key) = entry.storage.as_ref().and_then(|s| s.key.as_deref()) {
        let name = cfg.storage_spec_secret();
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(read("Secret", name))?
            .ok_or_else(|| CredentialError::MissingSecret {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        let json = data(&secret, key).ok_or_else(|| CredentialError::MissingKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        })?;
        let params = entry
            .storage
            .as_ref()
            .and_then(|s| s.parameters.clone())
            .unwrap_or_default();
        let env =
            from_storage_spec(&json, &params).map_err(|source| CredentialError::StorageSpec {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key: key.to_owned(),
                source,
            })?;
        let source = Source::StorageSpec {
            namespace: namespace.to_owned(),
            secret: name.to_owned(),
            key: key.to_owned(),
        };
        return Ok(Credentials { env, source });
    }
    // A storage spec without a key falls back on the ServiceAccount, `default` if unnamed.
    let sa_name = named_account.unwrap_or("default");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let Some(sa) = accounts
        .get_opt(sa_name)
        .await
        .map_err(read("ServiceAccount", sa_name))?
    else {
        // As KServe: no ServiceAccount, no credentials of its own.
        return Ok(Credentials {
            env: Env::default(),
            source: Source::MissingServiceAccount {
                namespace: namespace.to_owned(),
                name: sa_name.to_owned(),
            },
        });
    };
    let mut found = Vec::new();
    for reference in sa.secrets.unwrap_or_default() {
        let Some(name) = reference.name else { continue };
        match secrets
            .get_opt(&name)
            .await
            .map_err(read("Secret", &name))?
        {
            Some(s) => found.push(s),
            None => {
                // As KServe: the first Secret that cannot be read ends the list.
                tracing::warn!(secret = %name, service_account = %sa_name, "a Secret named by the ServiceAccount does not exist; the Secrets after it are not read");
                break;
            }
        }
    }
    let source = Source::ServiceAccount {
        namespace: namespace.to_owned(),
        name: sa_name.to_owned(),
        secrets: found
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect(),
    };
    let annotations = sa.metadata.annotations.unwrap_or_default();
    Ok(Credentials {
        env: from_service_account(&annotations, &found, cfg),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::{Request, Response, StatusCode};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;
    use crate::crd::LocalModelStorageSpec;

    fn secret(name: &str, pairs: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// KServe's shipped `credentials` (the ConfigMap of its charts).
    fn shipped() -> CredentialConfig {
        let mut cfg = CredentialConfig::default();
        cfg.s3.access_key_id_name = "AWS_ACCESS_KEY_ID".into();
        cfg.s3.secret_access_key_name = "AWS_SECRET_ACCESS_KEY".into();
        cfg
    }

    fn env_of(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_nodes_token_never_follows_a_models_endpoint_to_sts() {
        let irsa = [
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/agent"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks/token"),
            ("HTTPS_PROXY", "http://proxy:3128"),
        ];
        // A keyless MinIO model: the pod's identity, STS at AWS in the model's region.
        let mut env = env_of(&[
            ("AWS_ENDPOINT_URL", "http://minio:9000"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("HTTPS_PROXY", "http://model-proxy:1"),
        ]);
        inherit(&mut env, &env_of(&irsa));
        assert_eq!(env.get("AWS_ROLE_ARN"), Some("arn:aws:iam::1:role/agent"));
        assert_eq!(
            env.get("AWS_ENDPOINT_URL_STS"),
            Some("https://sts.eu-west-1.amazonaws.com")
        );
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("http://minio:9000"));
        assert_eq!(env.get("HTTPS_PROXY"), Some("http://model-proxy:1"));
        // No region: the global endpoint.
        let mut env = env_of(&[("AWS_ENDPOINT_URL", "http://minio:9000")]);
        inherit(&mut env, &env_of(&irsa));
        assert_eq!(
            env.get("AWS_ENDPOINT_URL_STS"),
            Some("https://sts.amazonaws.com")
        );
        // The agent's own STS endpoint wins over anything the model's settings name.
        let mut own = env_of(&irsa);
        own.set("AWS_ENDPOINT_URL_STS", "https://sts.internal.example");
        let mut env = env_of(&[
            ("AWS_ENDPOINT_URL", "http://minio:9000"),
            ("AWS_ENDPOINT_URL_STS", "http://minio:9000"),
            ("AWS_REGION", "cn-north-1"),
        ]);
        inherit(&mut env, &own);
        assert_eq!(
            env.get("AWS_ENDPOINT_URL_STS"),
            Some("https://sts.internal.example")
        );
        assert_eq!(
            aws_sts(Some("cn-north-1")),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        // No web identity on the node: nothing pinned.
        let mut env = env_of(&[("AWS_ENDPOINT_URL", "http://minio:9000")]);
        inherit(&mut env, &env_of(&[("HTTPS_PROXY", "http://proxy:3128")]));
        assert_eq!(env.get("AWS_ENDPOINT_URL_STS"), None);
        assert_eq!(env.get("HTTPS_PROXY"), Some("http://proxy:3128"));
    }

    #[test]
    fn storage_config_with_overrides() {
        let json = r#"{"type": "s3", "access_key_id": "AK", "secret_access_key": "SK", "endpoint_url": "http://minio:9000", "region": "us-west-2", "verify_ssl": false, "anonymous": "False", "cabundle_configmap": "minio-ca"}"#;
        let params = map(&[("region", "eu-central-1")]);
        let env = from_storage_spec(json, &params).unwrap();
        assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some("AK"));
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), Some("SK"));
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("http://minio:9000"));
        assert_eq!(env.get("AWS_DEFAULT_REGION"), Some("eu-central-1"));
        assert_eq!(env.get("S3_VERIFY_SSL"), Some("false"));
        assert_eq!(env.get("AWS_CA_BUNDLE_CONFIGMAP"), Some("minio-ca"));
        let hf = from_storage_spec(r#"{"type": "hf", "token": "hf_x"}"#, &BTreeMap::new()).unwrap();
        assert_eq!(hf.get("HF_TOKEN"), Some("hf_x"));
        assert_eq!(
            from_storage_spec(r#"{"type": "hdfs"}"#, &BTreeMap::new()).unwrap_err(),
            StorageSpecError::Unsupported("hdfs".into())
        );
        assert_eq!(
            from_storage_spec("[]", &BTreeMap::new()).unwrap_err(),
            StorageSpecError::NotJson
        );
        assert_eq!(
            from_storage_spec(r#"{"token": "x"}"#, &BTreeMap::new()).unwrap_err(),
            StorageSpecError::NoType
        );
        assert!(!format!("{env:?}").contains("SK"), "Debug shows names only");
    }

    /// KServe's own cases (`pkg/credentials/s3/utils_test.go`), with its expected variables in
    /// its order.
    #[test]
    fn s3_variables_as_kserves_build_s3_env_vars() {
        let cfg_all = S3Config {
            endpoint: "s3.aws.com".into(),
            use_https: "0".into(),
            region: "us-east-2".into(),
            verify_ssl: "0".into(),
            use_virtual_bucket: "true".into(),
            use_accelerate: "true".into(),
            use_anonymous_credential: "true".into(),
            ca_bundle_configmap: "value".into(),
            ca_bundle: "value".into(),
            ..Default::default()
        };
        let full = |https: &str, endpoint: &str, url: &str, rest: [&str; 7]| {
            let mut out = vec![];
            if !https.is_empty() {
                out.push(("S3_USE_HTTPS", https.to_owned()));
            }
            out.push(("S3_ENDPOINT", endpoint.to_owned()));
            out.push(("AWS_ENDPOINT_URL", url.to_owned()));
            for (var, v) in [
                "S3_VERIFY_SSL",
                "awsAnonymousCredential",
                "AWS_DEFAULT_REGION",
                "S3_USER_VIRTUAL_BUCKET",
                "S3_USE_ACCELERATE",
                "AWS_CA_BUNDLE",
                "AWS_CA_BUNDLE_CONFIGMAP",
            ]
            .into_iter()
            .zip(rest)
            {
                if !v.is_empty() {
                    out.push((var, v.to_owned()));
                }
            }
            out
        };
        let same = ["0", "true", "us-east-2", "true", "true", "value", "value"];
        let none = BTreeMap::new();
        let defaults = S3Config::default();

        // "S3Endpoint": https by default.
        let a = map(&[("serving.kserve.io/s3-endpoint", "s3.aws.com")]);
        assert_eq!(
            s3_env(&a, None, &defaults),
            full("", "s3.aws.com", "https://s3.aws.com", [""; 7])
        );
        // "AllAnnotations".
        let a = map(&[
            ("serving.kserve.io/s3-endpoint", "s3.aws.com"),
            ("serving.kserve.io/s3-region", "us-east-2"),
            ("serving.kserve.io/s3-verifyssl", "0"),
            ("serving.kserve.io/s3-usehttps", "0"),
            ("serving.kserve.io/s3-usevirtualbucket", "true"),
            ("serving.kserve.io/s3-useaccelerate", "true"),
            ("serving.kserve.io/s3-useanoncredential", "true"),
            ("serving.kserve.io/s3-cabundle", "value"),
            ("serving.kserve.io/s3-cabundle-configmap", "value"),
        ]);
        let expected = full("0", "s3.aws.com", "http://s3.aws.com", same);
        assert_eq!(s3_env(&a, None, &defaults), expected);
        // "AllSecret".
        let data = secret(
            "s",
            &[
                ("S3_USE_HTTPS", "0"),
                ("S3_ENDPOINT", "s3.aws.com"),
                ("S3_VERIFY_SSL", "0"),
                ("awsAnonymousCredential", "true"),
                ("AWS_DEFAULT_REGION", "us-east-2"),
                ("S3_USER_VIRTUAL_BUCKET", "true"),
                ("S3_USE_ACCELERATE", "true"),
                ("AWS_CA_BUNDLE", "value"),
                ("AWS_CA_BUNDLE_CONFIGMAP", "value"),
            ],
            &[],
        );
        assert_eq!(s3_env(&none, Some(&data), &defaults), expected);
        // "AllS3Config".
        assert_eq!(s3_env(&none, None, &cfg_all), expected);
        // "AnnotationsSecretAndS3Config": annotations win over data over config.
        let a = map(&[
            ("serving.kserve.io/s3-endpoint", "s3.aws.com-annotation"),
            ("serving.kserve.io/s3-region", "us-east-2-annotation"),
            ("serving.kserve.io/s3-verifyssl", "0"),
            ("serving.kserve.io/s3-usevirtualbucket", "true"),
            ("serving.kserve.io/s3-useaccelerate", "true"),
            ("serving.kserve.io/s3-useanoncredential", "true"),
            ("serving.kserve.io/s3-cabundle", "value-annotation"),
            (
                "serving.kserve.io/s3-cabundle-configmap",
                "value-annotation",
            ),
        ]);
        let data = secret(
            "s",
            &[
                ("S3_ENDPOINT", "s3.aws.com-secret"),
                ("S3_VERIFY_SSL", "1"),
                ("awsAnonymousCredential", "false"),
                ("AWS_DEFAULT_REGION", "us-east-2-secret"),
                ("S3_USER_VIRTUAL_BUCKET", "false"),
                ("S3_USE_ACCELERATE", "false"),
                ("AWS_CA_BUNDLE", "value-secret"),
                ("AWS_CA_BUNDLE_CONFIGMAP", "value-secret"),
            ],
            &[],
        );
        let cfg = S3Config {
            endpoint: "s3.aws.com-config".into(),
            region: "us-east-2-config".into(),
            verify_ssl: "1".into(),
            use_virtual_bucket: "false".into(),
            use_accelerate: "false".into(),
            use_anonymous_credential: "false".into(),
            ca_bundle_configmap: "value-config".into(),
            ca_bundle: "value-config".into(),
            ..Default::default()
        };
        assert_eq!(
            s3_env(&a, Some(&data), &cfg),
            full(
                "",
                "s3.aws.com-annotation",
                "https://s3.aws.com-annotation",
                [
                    "0",
                    "true",
                    "us-east-2-annotation",
                    "true",
                    "true",
                    "value-annotation",
                    "value-annotation"
                ]
            )
        );
        // "SecretAndS3Config".
        let data = secret(
            "s",
            &[
                ("S3_ENDPOINT", "s3.aws.com-secret"),
                ("S3_VERIFY_SSL", "0"),
                ("awsAnonymousCredential", "true"),
                ("AWS_DEFAULT_REGION", "us-east-2-secret"),
                ("S3_USER_VIRTUAL_BUCKET", "true"),
                ("S3_USE_ACCELERATE", "true"),
                ("AWS_CA_BUNDLE", "value-secret"),
                ("AWS_CA_BUNDLE_CONFIGMAP", "value-secret"),
            ],
            &[],
        );
        assert_eq!(
            s3_env(&none, Some(&data), &cfg),
            full(
                "",
                "s3.aws.com-secret",
                "https://s3.aws.com-secret",
                [
                    "0",
                    "true",
                    "us-east-2-secret",
                    "true",
                    "true",
                    "value-secret",
                    "value-secret"
                ]
            )
        );
        // "EndpointWithHttpsProtocol" / "EndpointWithHttpProtocol": the scheme decides.
        let a = map(&[
            ("serving.kserve.io/s3-endpoint", "https://s3.aws.com"),
            ("serving.kserve.io/s3-verifyssl", "1"),
            ("serving.kserve.io/s3-usehttps", "0"),
        ]);
        let mut rest = [""; 7];
        rest[0] = "1";
        assert_eq!(
            s3_env(&a, None, &defaults),
            full("1", "s3.aws.com", "https://s3.aws.com", rest)
        );
        let a = map(&[
            ("serving.kserve.io/s3-endpoint", "http://minio:9000"),
            ("serving.kserve.io/s3-usehttps", "1"),
        ]);
        assert_eq!(
            s3_env(&a, None, &defaults),
            full("0", "minio:9000", "http://minio:9000", [""; 7]),
            "never `https://http://minio:9000`"
        );
        // "LocalWithHttpProtocol": a schemed endpoint in the Secret's data.
        let data = secret(
            "s",
            &[
                ("S3_ENDPOINT", "http://localhost:9000"),
                ("S3_USE_HTTPS", "1"),
            ],
            &[],
        );
        let cfg = S3Config {
            endpoint: "s3.aws.com-config".into(),
            use_virtual_bucket: "false".into(),
            ..Default::default()
        };
        let mut rest = [""; 7];
        rest[3] = "false";
        assert_eq!(
            s3_env(&none, Some(&data), &cfg),
            full("0", "localhost:9000", "http://localhost:9000", rest)
        );
        // Only `0` means http without a scheme; an annotation present but empty wins and sets
        // nothing (the config is not consulted).
        let a = map(&[
            ("serving.kserve.io/s3-endpoint", " minio:9000 "),
            ("serving.kserve.io/s3-usehttps", "false"),
            ("serving.kserve.io/s3-region", ""),
        ]);
        let cfg = S3Config {
            region: "us-west-1".into(),
            ..Default::default()
        };
        assert_eq!(
            s3_env(&a, None, &cfg),
            full("false", "minio:9000", "https://minio:9000", [""; 7])
        );
    }

    #[test]
    fn s3_secrets_are_found_by_the_configured_key_names() {
        let kserve_names = secret(
            "s3",
            &[("awsAccessKeyID", "AK"), ("awsSecretAccessKey", "SK")],
            &[("serving.kserve.io/s3-endpoint", "http://minio:9000")],
        );
        let aws_names = secret(
            "s3",
            &[
                ("AWS_ACCESS_KEY_ID", "AK2"),
                ("AWS_SECRET_ACCESS_KEY", "SK2"),
            ],
            &[],
        );
        // No `credentials` config: KServe's code defaults.
        let code = CredentialConfig::default();
        let env =
            from_service_account(&BTreeMap::new(), std::slice::from_ref(&kserve_names), &code);
        assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some("AK"));
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), Some("SK"));
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("http://minio:9000"));
        assert_eq!(env.get("S3_USE_HTTPS"), Some("0"));
        let env = from_service_account(&BTreeMap::new(), std::slice::from_ref(&aws_names), &code);
        assert_eq!(
            env.get("AWS_ACCESS_KEY_ID"),
            None,
            "not an S3 Secret to KServe"
        );
        // The shipped ConfigMap's names.
        let env = from_service_account(&BTreeMap::new(), &[aws_names], &shipped());
        assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some("AK2"));
        let env = from_service_account(&BTreeMap::new(), &[kserve_names], &shipped());
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), None);
    }

    #[test]
    fn each_secret_is_the_first_kind_whose_key_it_holds() {
        let cfg = shipped();
        let s3_and_hf = secret(
            "a",
            &[
                ("AWS_SECRET_ACCESS_KEY", "SK"),
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("HF_TOKEN", "hf_ignored"),
            ],
            &[],
        );
        let gcs = secret(
            "b",
            &[
                (
                    "gcloud-application-credentials.json",
                    "{\"type\": \"service_account\"}",
                ),
                ("HF_TOKEN", "hf_ignored"),
            ],
            &[],
        );
        let azure_and_hf = secret(
            "c",
            &[("AZURE_CLIENT_ID", "x"), ("HF_TOKEN", "hf_ignored")],
            &[],
        );
        let headers = secret(
            "d",
            &[
                ("https-host", "models.example"),
                ("headers", "{\"X\": \"1\"}"),
            ],
            &[],
        );
        let env = from_service_account(
            &BTreeMap::new(),
            &[s3_and_hf, gcs, azure_and_hf, headers],
            &cfg,
        );
        assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some("AK"));
        assert!(env.get("GOOGLE_APPLICATION_CREDENTIALS_JSON").is_some());
        assert_eq!(env.get("models.example-headers"), Some("{\"X\": \"1\"}"));
        assert_eq!(
            env.get("HF_TOKEN"),
            None,
            "every HF_TOKEN sat in a Secret of another kind"
        );
        let hf = secret("e", &[("HF_TOKEN", "hf_abc")], &[]);
        let ms = secret("f", &[("MODELSCOPE_API_TOKEN", "ms")], &[]);
        let env = from_service_account(&BTreeMap::new(), &[hf, ms], &cfg);
        assert_eq!(env.get("HF_TOKEN"), Some("hf_abc"));
        assert_eq!(env.get("MODELSCOPE_API_TOKEN"), Some("ms"));
    }

    #[test]
    fn an_irsa_service_account_gives_its_annotations_then_secrets_override() {
        let mut cfg = shipped();
        cfg.s3.region = "us-west-2".into();
        let account = map(&[
            ("eks.amazonaws.com/role-arn", "arn:aws:iam::1:role/puller"),
            (
                "serving.kserve.io/s3-endpoint",
                "s3.us-west-2.amazonaws.com",
            ),
            ("serving.kserve.io/s3-usevirtualbucket", "true"),
        ]);
        let env = from_service_account(&account, &[], &cfg);
        assert_eq!(
            env.get("AWS_ENDPOINT_URL"),
            Some("https://s3.us-west-2.amazonaws.com")
        );
        assert_eq!(env.get("AWS_DEFAULT_REGION"), Some("us-west-2"));
        assert_eq!(env.get("S3_USER_VIRTUAL_BUCKET"), Some("true"));
        assert_eq!(
            env.get("AWS_ACCESS_KEY_ID"),
            None,
            "no keys: the chain finds the identity"
        );
        let keys = secret(
            "k",
            &[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")],
            &[("serving.kserve.io/s3-endpoint", "http://minio:9000")],
        );
        let env = from_service_account(&account, &[keys], &cfg);
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("http://minio:9000"));
        assert_eq!(env.get("S3_USER_VIRTUAL_BUCKET"), Some("true"));
        // Without the IRSA annotation the account's own annotations give nothing.
        let plain = map(&[("serving.kserve.io/s3-endpoint", "s3.amazonaws.com")]);
        assert_eq!(from_service_account(&plain, &[], &cfg), Env::default());
    }

    #[test]
    fn the_ca_bundle_key_follows_aws_ca_bundle() {
        assert_eq!(ca_bundle_key(&Env::default()), "cabundle.crt");
        let env: Env = [("AWS_CA_BUNDLE", "/etc/ssl/custom-certs/minio.crt")]
            .into_iter()
            .collect();
        assert_eq!(ca_bundle_key(&env), "minio.crt");
        let cm = ConfigMap {
            data: Some(map(&[
                (
                    "cabundle.crt",
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                ),
                ("junk", "x"),
            ])),
            ..Default::default()
        };
        assert!(ca_bundle_pem(&cm, "cabundle.crt").is_ok());
        assert_eq!(
            ca_bundle_pem(&cm, "junk").unwrap_err(),
            "key `junk` holds no PEM certificate"
        );
        assert_eq!(
            ca_bundle_pem(&cm, "other.crt").unwrap_err(),
            "it has no key `other.crt`"
        );
    }

    #[test]
    fn sources_name_objects_only() {
        let shown = [
            Source::Anonymous,
            Source::StorageSpec {
                namespace: "jobs".into(),
                secret: "storage-config".into(),
                key: "s3".into(),
            },
            Source::ServiceAccount {
                namespace: "jobs".into(),
                name: "puller".into(),
                secrets: vec!["s3-keys".into(), "hf".into()],
            },
            Source::ServiceAccount {
                namespace: "jobs".into(),
                name: "empty".into(),
                secrets: Vec::new(),
            },
            Source::MissingServiceAccount {
                namespace: "jobs".into(),
                name: "gone".into(),
            },
        ]
        .map(|s| s.to_string());
        assert_eq!(
            shown,
            [
                "no credentials (the entry names no ServiceAccount and no storage key)",
                "key `s3` of Secret jobs/storage-config",
                "ServiceAccount jobs/puller (Secrets s3-keys, hf)",
                "ServiceAccount jobs/empty, which names no Secret that exists",
                "no credentials (ServiceAccount jobs/gone does not exist)",
            ]
        );
    }

    /// An API server holding `objects` (by path) that answers GETs and 404s the rest, and
    /// the paths asked.
    fn api(objects: Vec<(String, Value)>) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let objects: BTreeMap<String, Value> = objects
            .into_iter()
            .map(|(p, v)| (p.to_owned(), v))
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some((req, reply)) = handle.next_request().await {
                let path = req.uri().path().to_owned();
                log.lock().unwrap().push(path.clone());
                let (status, body) = match objects.get(&path) {
                    Some(v) => (StatusCode::OK, v.clone()),
                    None => (
                        StatusCode::NOT_FOUND,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                    ),
                };
                let resp = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                reply.send_response(resp);
            }
        });
        (kube::Client::new(service, "default"), seen)
    }

    const NS: &str = "kserve-localmodel-jobs";

    fn path(kind: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{NS}/{kind}/{name}")
    }

    fn entry() -> LocalModelInfo {
        LocalModelInfo {
            source_model_uri: "s3://models/m".into(),
            model_name: "m".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn only_entries_that_ask_get_credentials_and_default_stands_in() {
        let sa = |name: &str, secrets: &[&str]| {
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": NS},
                   "secrets": secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>()})
        };
        let sec = |name: &str, data: Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "stringData": data});
        let objects = || {
            vec![
                (
                    path("serviceaccounts", "default"),
                    sa("default", &["hf", "gone", "after"]),
                ),
                (
                    path("secrets", "hf"),
                    sec("hf", json!({"HF_TOKEN": "hf_default"})),
                ),
                (
                    path("secrets", "after"),
                    sec("after", json!({"HF_TOKEN": "hf_after"})),
                ),
            ]
        };
        // Neither a ServiceAccount nor a storage spec: nothing is read, as KServe.
        let (client, seen) = api(objects());
        let c = for_entry(&client, NS, &entry(), &shipped()).await.unwrap();
        assert_eq!(c.source, Source::Anonymous);
        assert!(seen.lock().unwrap().is_empty());
        // A storage spec without a key: the `default` ServiceAccount's Secrets, up to the
        // first that does not exist.
        let (client, seen) = api(objects());
        let mut e = entry();
        e.storage = Some(LocalModelStorageSpec {
            key: None,
            parameters: Some(map(&[("type", "s3")])),
        });
        let c = for_entry(&client, NS, &e, &shipped()).await.unwrap();
        assert_eq!(c.env.get("HF_TOKEN"), Some("hf_default"));
        assert_eq!(
            c.source,
            Source::ServiceAccount {
                namespace: NS.into(),
                name: "default".into(),
                secrets: vec!["hf".into()],
            }
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [
                path("serviceaccounts", "default"),
                path("secrets", "hf"),
                path("secrets", "gone")
            ]
        );
    }

    #[tokio::test]
    async fn a_ca_bundle_configmap_is_read_into_memory() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let objects = |with_map: bool| {
            let mut o = vec![
                (
                    path("serviceaccounts", "puller"),
                    json!({"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": "puller", "namespace": NS},
                           "secrets": [{"name": "minio"}]}),
                ),
                (
                    path("secrets", "minio"),
                    json!({"apiVersion": "v1", "kind": "Secret",
                           "metadata": {"name": "minio", "namespace": NS,
                                        "annotations": {"serving.kserve.io/s3-endpoint": "https://minio:9000",
                                                        "serving.kserve.io/s3-cabundle-configmap": "minio-ca"}},
                           "stringData": {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}}),
                ),
            ];
            if with_map {
                o.push((
                    path("configmaps", "minio-ca"),
                    json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "minio-ca", "namespace": NS},
                           "data": {"cabundle.crt": pem}}),
                ));
            }
            o
        };
        let mut e = entry();
        e.service_account_name = Some("puller".into());
        let (client, _) = api(objects(true));
        let c = for_entry(&client, NS, &e, &shipped()).await.unwrap();
        assert_eq!(c.env.get("AWS_CA_BUNDLE_PEM"), Some(pem));
        assert_eq!(c.env.get("AWS_ENDPOINT_URL"), Some("https://minio:9000"));
        let (client, _) = api(objects(false));
        let err = for_entry(&client, NS, &e, &shipped()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the CA bundle of ConfigMap {NS}/minio-ca: it does not exist")
        );
    }
}
