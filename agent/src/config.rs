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

/// `credentials`: the names under which KServe's credential builder finds things.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CredentialConfig {
    pub storage_spec_secret_name: String,
    pub s3: S3Config,
    pub gcs: GcsConfig,
}

impl Default for CredentialConfig {
    fn default() -> Self {
        Self {
            storage_spec_secret_name: "storage-config".into(),
            s3: S3Config::default(),
            gcs: GcsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct S3Config {
    #[serde(rename = "s3AccessKeyIDName")]
    pub access_key_id_name: String,
    #[serde(rename = "s3SecretAccessKeyName")]
    pub secret_access_key_name: String,
    /// Defaults for S3 settings a Secret does not carry (`s3Endpoint`, `s3UseHttps`…).
    #[serde(flatten)]
    pub defaults: BTreeMap<String, serde_json::Value>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            access_key_id_name: "AWS_ACCESS_KEY_ID".into(),
            secret_access_key_name: "AWS_SECRET_ACCESS_KEY".into(),
            defaults: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GcsConfig {
    pub gcs_credential_file_name: String,
}

impl Default for GcsConfig {
    fn default() -> Self {
        Self {
            gcs_credential_file_name: "gcloud-application-credentials.json".into(),
        }
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
        assert_eq!(c.credentials.storage_spec_secret_name, "storage-config");
        assert_eq!(
            c.credentials.s3.secret_access_key_name,
            "AWS_SECRET_ACCESS_KEY"
        );
        assert!(c.credentials.s3.defaults.contains_key("s3Endpoint"));
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
        ] {
            let err = Config::parse(&data(&[bad])).unwrap_err().to_string();
            assert!(err.contains(bad.0), "{err}");
        }
    }
}
