//! KServe's `inferenceservice-config` ConfigMap, the parts the agent reads: the `localModel`
//! key (with KServe's spelling `reconcilationFrequencyInSecs`) and the `credentials` key. It
//! is read again on every reconcile, as KServe's agent does, so edits apply without a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The ConfigMap's name, in the agent's own namespace (`POD_NAMESPACE`).
pub const CONFIG_MAP: &str = "inferenceservice-config";
/// Defaults when a field is absent: KServe's 60 s, and the job namespace KServe ships in its
/// ConfigMap (its code's own default is empty, which fails).
const DEFAULT_FREQUENCY: Duration = Duration::from_secs(60);
const DEFAULT_JOB_NAMESPACE: &str = "kserve-localmodel-jobs";

/// `localModel` as the agent uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModelConfig {
    /// Where credentials (Secrets, ServiceAccounts) are looked up; KServe runs its Jobs there.
    pub job_namespace: String,
    /// How often every model is checked again.
    pub reconcile_every: Duration,
}

impl Default for LocalModelConfig {
    fn default() -> Self {
        Self {
            job_namespace: DEFAULT_JOB_NAMESPACE.into(),
            reconcile_every: DEFAULT_FREQUENCY,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLocalModel {
    #[serde(default)]
    job_namespace: Option<String>,
    /// KServe's spelling.
    #[serde(default)]
    reconcilation_frequency_in_secs: Option<i64>,
}

/// `credentials`: the names under which KServe's credential builder finds things, and the S3
/// settings it falls back on. As in KServe, a field that is absent or empty takes the code's
/// default, which is not always the shipped ConfigMap's (see [`S3Config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CredentialConfig {
    pub storage_spec_secret_name: String,
    pub s3: S3Config,
    pub gcs: GcsConfig,
}

impl CredentialConfig {
    /// The Secret of storage specs: `storageSpecSecretName`, else `storage-config`.
    pub fn storage_spec_secret(&self) -> &str {
        or_default(&self.storage_spec_secret_name, "storage-config")
    }
}

fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

/// `credentials.s3`, field for field as KServe's `S3Config`. The settings are the last
/// source of each S3 variable, after a Secret's `serving.kserve.io/s3-*` annotations and its
/// data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct S3Config {
    #[serde(rename = "s3AccessKeyIDName")]
    pub access_key_id_name: String,
    #[serde(rename = "s3SecretAccessKeyName")]
    pub secret_access_key_name: String,
    #[serde(rename = "s3Endpoint")]
    pub endpoint: String,
    #[serde(rename = "s3UseHttps")]
    pub use_https: String,
    #[serde(rename = "s3Region")]
    pub region: String,
    #[serde(rename = "s3VerifySSL")]
    pub verify_ssl: String,
    #[serde(rename = "s3UseVirtualBucket")]
    pub use_virtual_bucket: String,
    #[serde(rename = "s3UseAccelerate")]
    pub use_accelerate: String,
    #[serde(rename = "s3UseAnonymousCredential")]
    pub use_anonymous_credential: String,
    #[serde(rename = "s3CABundleConfigMap")]
    pub ca_bundle_configmap: String,
    #[serde(rename = "s3CABundle")]
    pub ca_bundle: String,
}

impl S3Config {
    /// The Secret data key of the access key ID: `s3AccessKeyIDName`, else KServe's code
    /// default `awsAccessKeyID` (its shipped ConfigMap names `AWS_ACCESS_KEY_ID`).
    pub fn access_key_id_key(&self) -> &str {
        or_default(&self.access_key_id_name, "awsAccessKeyID")
    }

    /// The Secret data key of the secret key, whose presence makes a Secret an S3 one:
    /// `s3SecretAccessKeyName`, else KServe's code default `awsSecretAccessKey` (shipped:
    /// `AWS_SECRET_ACCESS_KEY`).
    pub fn secret_access_key_key(&self) -> &str {
        or_default(&self.secret_access_key_name, "awsSecretAccessKey")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GcsConfig {
    pub gcs_credential_file_name: String,
}

impl GcsConfig {
    /// The Secret data key of a GCS key file: `gcsCredentialFileName`, else
    /// `gcloud-application-credentials.json`.
    pub fn credential_file_key(&self) -> &str {
        or_default(
            &self.gcs_credential_file_name,
            "gcloud-application-credentials.json",
        )
    }
}

/// A key of the ConfigMap that is present but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{CONFIG_MAP}: key {key} is not valid JSON: {source}")]
    Json {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{CONFIG_MAP}: localModel.reconcilationFrequencyInSecs must be positive, got {0}")]
    Frequency(i64),
}

/// The whole configuration the agent takes from the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub local_model: LocalModelConfig,
    pub credentials: CredentialConfig,
}

impl Config {
    /// Parses the ConfigMap's data. A key that is present but broken is an error naming it
    /// (KServe panics on some of these); absent keys take KServe's defaults.
    pub fn parse(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let json = |key| move |source| ConfigError::Json { key, source };
        let mut config = Config::default();
        if let Some(text) = data.get("localModel") {
            let raw: RawLocalModel = serde_json::from_str(text).map_err(json("localModel"))?;
            if let Some(ns) = raw.job_namespace.filter(|n| !n.is_empty()) {
                config.local_model.job_namespace = ns;
            }
            if let Some(secs) = raw.reconcilation_frequency_in_secs {
                if secs <= 0 {
                    return Err(ConfigError::Frequency(secs));
                }
                config.local_model.reconcile_every = Duration::from_secs(secs as u64);
            }
        }
        if let Some(text) = data.get("credentials") {
            config.credentials = serde_json::from_str(text).map_err(json("credentials"))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn shipped_configmap() {
        // As in KServe's charts/kserve-resources/files/common/configmap.yaml.
        let c = Config::parse(&data(&[
            (
                "localModel",
                r#"{"enabled": false, "jobNamespace": "kserve-localmodel-jobs", "defaultJobImage": "kserve/storage-initializer:latest", "fsGroup": 1000, "jobTTLSecondsAfterFinished": 3600, "reconcilationFrequencyInSecs": 60}"#,
            ),
            (
                "credentials",
                r#"{"storageSpecSecretName": "storage-config", "storageSecretNameAnnotation": "serving.kserve.io/storageSecretName", "gcs": {"gcsCredentialFileName": "gcloud-application-credentials.json"}, "s3": {"s3AccessKeyIDName": "AWS_ACCESS_KEY_ID", "s3SecretAccessKeyName": "AWS_SECRET_ACCESS_KEY", "s3Endpoint": "", "s3UseHttps": "", "s3Region": ""}}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(c.local_model.job_namespace, "kserve-localmodel-jobs");
        assert_eq!(c.local_model.reconcile_every, Duration::from_secs(60));
        assert_eq!(c.credentials.storage_spec_secret(), "storage-config");
        assert_eq!(
            c.credentials.s3.secret_access_key_key(),
            "AWS_SECRET_ACCESS_KEY"
        );
        assert_eq!(c.credentials.s3.access_key_id_key(), "AWS_ACCESS_KEY_ID");
        assert_eq!(c.credentials.s3.endpoint, "");
    }

    #[test]
    fn credential_names_fall_back_to_kserves_code_defaults() {
        // No `credentials` key, or empty fields: KServe's code defaults, not the shipped ones.
        for c in [
            Config::parse(&BTreeMap::new()).unwrap(),
            Config::parse(&data(&[(
                "credentials",
                r#"{"storageSpecSecretName": "", "s3": {"s3AccessKeyIDName": "", "s3SecretAccessKeyName": ""}, "gcs": {}}"#,
            )]))
            .unwrap(),
        ] {
            assert_eq!(c.credentials.storage_spec_secret(), "storage-config");
            assert_eq!(c.credentials.s3.access_key_id_key(), "awsAccessKeyID");
            assert_eq!(c.credentials.s3.secret_access_key_key(), "awsSecretAccessKey");
            assert_eq!(
                c.credentials.gcs.credential_file_key(),
                "gcloud-application-credentials.json"
            );
        }
        let c = Config::parse(&data(&[(
            "credentials",
            r#"{"s3": {"s3Endpoint": "minio.svc:9000", "s3UseHttps": "0", "s3CABundleConfigMap": "ca"}}"#,
        )]))
        .unwrap();
        assert_eq!(c.credentials.s3.endpoint, "minio.svc:9000");
        assert_eq!(c.credentials.s3.use_https, "0");
        assert_eq!(c.credentials.s3.ca_bundle_configmap, "ca");
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(Config::parse(&BTreeMap::new()).unwrap(), Config::default());
        let c = Config::parse(&data(&[(
            "localModel",
            r#"{"reconcilationFrequencyInSecs": 5}"#,
        )]))
        .unwrap();
        assert_eq!(c.local_model.reconcile_every, Duration::from_secs(5));
        assert_eq!(c.local_model.job_namespace, DEFAULT_JOB_NAMESPACE);
        for bad in [
            ("localModel", "{"),
            ("localModel", r#"{"reconcilationFrequencyInSecs": 0}"#),
            ("credentials", r#"{"s3": 5}"#),
            ("credentials", r#"{"s3": {"s3UseHttps": 0}}"#),
        ] {
            let err = Config::parse(&data(&[bad])).unwrap_err().to_string();
            assert!(err.contains(bad.0), "{err}");
        }
    }
}
