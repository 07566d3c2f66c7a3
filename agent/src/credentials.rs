//! Credentials for a model, found where KServe's credential builder finds them (reference §5),
//! always in the job namespace: the `storage-config` Secret when the entry names a storage
//! key, else the Secrets of its ServiceAccount when it names one, else none.
//!
//! KServe turns them into environment variables of a download pod; here they become an
//! in-memory [`Env`] handed to the engine, with the same variable names, so the stores read
//! them exactly as the storage-initializer would. Nothing is logged or written to disk.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use modelpull::store::Env;

use crate::config::CredentialConfig;
use crate::crd::LocalModelInfo;

const S3_ANNOTATIONS: [(&str, &str); 8] = [
    ("serving.kserve.io/s3-endpoint", "S3_ENDPOINT"),
    ("serving.kserve.io/s3-usehttps", "S3_USE_HTTPS"),
    ("serving.kserve.io/s3-region", "AWS_DEFAULT_REGION"),
    ("serving.kserve.io/s3-verifyssl", "S3_VERIFY_SSL"),
    (
        "serving.kserve.io/s3-usevirtualbucket",
        "S3_USER_VIRTUAL_BUCKET",
    ),
    ("serving.kserve.io/s3-useaccelerate", "S3_USE_ACCELERATE"),
    (
        "serving.kserve.io/s3-useanoncredential",
        "awsAnonymousCredential",
    ),
    ("serving.kserve.io/s3-cabundle", "AWS_CA_BUNDLE"),
];

/// Which credentials a download uses, by name only (never a value): the Events of a refused
/// download say which Secret or ServiceAccount to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The entry names neither a storage key nor a ServiceAccount: anonymous access.
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
    /// The entry names a ServiceAccount that does not exist: anonymous access, as KServe's.
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
/// storage-initializer's `STORAGE_CONFIG` + `STORAGE_OVERRIDE_CONFIG`.
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

/// What the Secrets of a ServiceAccount provide, as KServe's builder reads each Secret: S3 keys
/// (with `serving.kserve.io/s3-*` annotations, else the `credentials.s3` defaults), a GCS
/// key file, an HF token, extra headers for a host.
pub fn from_secrets(secrets: &[Secret], cfg: &CredentialConfig) -> Env {
    let mut env = Env::default();
    for secret in secrets {
        if let Some(secret_key) = data(secret, &cfg.s3.secret_access_key_name) {
            if let Some(id) = data(secret, &cfg.s3.access_key_id_name) {
                env.set("AWS_ACCESS_KEY_ID", id);
            }
            env.set("AWS_SECRET_ACCESS_KEY", secret_key);
            let annotations = secret.metadata.annotations.clone().unwrap_or_default();
            for (annotation, var) in S3_ANNOTATIONS {
                let config_key = annotation
                    .strip_prefix("serving.kserve.io/")
                    .map(s3_config_name);
                let value = annotations.get(annotation).cloned().or_else(|| {
                    config_key
                        .and_then(|k| cfg.s3.defaults.get(&k))
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .filter(|v| !v.is_empty())
                });
                if let Some(v) = value {
                    env.set(var, v);
                }
            }
            if let Some(endpoint) = env.get("S3_ENDPOINT").map(str::to_owned) {
                let https = env.get("S3_USE_HTTPS").is_none_or(|v| v != "0");
                env.set(
                    "AWS_ENDPOINT_URL",
                    format!("{}://{endpoint}", if https { "https" } else { "http" }),
                );
            }
        }
        if let Some(json) = data(secret, &cfg.gcs.gcs_credential_file_name) {
            env.set("GOOGLE_APPLICATION_CREDENTIALS_JSON", json);
        }
        if let Some(token) = data(secret, "HF_TOKEN") {
            env.set("HF_TOKEN", token);
        }
        if let (Some(host), Some(headers)) = (data(secret, "https-host"), data(secret, "headers")) {
            env.set(format!("{host}-headers"), headers);
        }
    }
    env
}

/// `s3-endpoint` → `s3Endpoint`, the `credentials.s3` key of the same setting.
fn s3_config_name(annotation: &str) -> String {
    match annotation {
        "s3-endpoint" => "s3Endpoint",
        "s3-usehttps" => "s3UseHttps",
        "s3-region" => "s3Region",
        "s3-verifyssl" => "s3VerifySSL",
        "s3-usevirtualbucket" => "s3UseVirtualBucket",
        "s3-useaccelerate" => "s3UseAccelerate",
        "s3-useanoncredential" => "s3UseAnonymousCredential",
        "s3-cabundle" => "s3CABundle",
        other => other,
    }
    .to_owned()
}

/// The environment for `entry`, read from the cluster. The process environment is not
/// inherited: a model gets only its own credentials (plus the node's proxy settings, which
/// the caller adds).
pub async fn for_entry(
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
    if let Some(key) = entry.storage.as_ref().and_then(|s| s.key.as_deref()) {
        let name = &cfg.storage_spec_secret_name;
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(read("Secret", name))?
            .ok_or_else(|| CredentialError::MissingSecret {
                namespace: namespace.to_owned(),
                name: name.clone(),
            })?;
        let json = data(&secret, key).ok_or_else(|| CredentialError::MissingKey {
            namespace: namespace.to_owned(),
            name: name.clone(),
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
                name: name.clone(),
                key: key.to_owned(),
                source,
            })?;
        let source = Source::StorageSpec {
            namespace: namespace.to_owned(),
            secret: name.clone(),
            key: key.to_owned(),
        };
        return Ok(Credentials { env, source });
    }
    // As KServe: credentials only for an entry that names a ServiceAccount (or a storage key,
    // above); never the `default` account's Secrets for everyone.
    let Some(sa_name) = entry
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    else {
        return Ok(Credentials {
            env: Env::default(),
            source: Source::Anonymous,
        });
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let Some(sa) = accounts
        .get_opt(sa_name)
        .await
        .map_err(read("ServiceAccount", sa_name))?
    else {
        // As KServe: no ServiceAccount, no credentials (anonymous access).
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
                tracing::warn!(secret = %name, service_account = %sa_name, "a Secret named by the ServiceAccount does not exist")
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
    Ok(Credentials {
        env: from_secrets(&found, cfg),
        source,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn secret(pairs: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
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

    #[test]
    fn storage_config_with_overrides() {
        let json = r#"{"type": "s3", "access_key_id": "AK", "secret_access_key": "SK", "endpoint_url": "http://minio:9000", "region": "us-west-2", "verify_ssl": false, "anonymous": "False"}"#;
        let params: BTreeMap<String, String> =
            [("region".to_owned(), "eu-central-1".to_owned())].into();
        let env = from_storage_spec(json, &params).unwrap();
        assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some("AK"));
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), Some("SK"));
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("http://minio:9000"));
        assert_eq!(env.get("AWS_DEFAULT_REGION"), Some("eu-central-1"));
        assert_eq!(env.get("S3_VERIFY_SSL"), Some("false"));
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

    #[test]
    fn service_account_secrets() {
        let cfg = CredentialConfig::default();
        let s3 = secret(
            &[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")],
            &[
                ("serving.kserve.io/s3-endpoint", "minio.svc:9000"),
                ("serving.kserve.io/s3-usehttps", "0"),
                ("serving.kserve.io/s3-region", "us-east-2"),
            ],
        );
        let gcs = secret(
            &[(
                "gcloud-application-credentials.json",
                "{\"type\": \"service_account\"}",
            )],
            &[],
        );
        let hf = secret(&[("HF_TOKEN", "hf_abc")], &[]);
        let headers = secret(
            &[
                ("https-host", "models.example"),
                ("headers", "{\"X\": \"1\"}"),
            ],
            &[],
        );
        let env = from_secrets(&[s3, gcs, hf, headers], &cfg);
        assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some("AK"));
        assert_eq!(env.get("S3_ENDPOINT"), Some("minio.svc:9000"));
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("http://minio.svc:9000"));
        assert_eq!(env.get("AWS_DEFAULT_REGION"), Some("us-east-2"));
        assert!(env.get("GOOGLE_APPLICATION_CREDENTIALS_JSON").is_some());
        assert_eq!(env.get("HF_TOKEN"), Some("hf_abc"));
        assert_eq!(env.get("models.example-headers"), Some("{\"X\": \"1\"}"));
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

    #[test]
    fn config_defaults_fill_missing_annotations() {
        let mut cfg = CredentialConfig::default();
        cfg.s3
            .defaults
            .insert("s3Endpoint".into(), serde_json::json!("s3.internal:443"));
        let env = from_secrets(&[secret(&[("AWS_SECRET_ACCESS_KEY", "SK")], &[])], &cfg);
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("https://s3.internal:443"));
    }
}
