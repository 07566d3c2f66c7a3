//! The environment a store reads its settings and credentials from.
//!
//! The CLI takes the process environment, exactly as KServe's storage-initializer does. The
//! agent builds one per model from Secrets it read, in memory, so credentials never touch the
//! disk or another process; that is why stores read an [`Env`] and never `std::env` directly.

use std::collections::BTreeMap;

/// Variables by name. Debug output shows names only: values are often secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

/// The fields of an `"type": "s3"` storage spec (KServe's `storage-config` Secret entry) and
/// the variable each sets, as KServe's storage-initializer maps them.
pub const S3_STORAGE_SPEC: [(&str, &str); 7] = [
    ("endpoint_url", "AWS_ENDPOINT_URL"),
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("region", "AWS_DEFAULT_REGION"),
    ("ca_bundle", "AWS_CA_BUNDLE"),
    ("verify_ssl", "S3_VERIFY_SSL"),
    ("anonymous", "awsAnonymousCredential"),
];

impl Env {
    /// The process environment (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Self {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    /// A variable's value; empty values count as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// The first of `names` that is set.
    pub fn first(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.get(n))
    }

    /// A boolean as the Python stores read them: `1`, `true`, `yes`, `on` (any case).
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.get(name).map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
    }

    /// The forward proxies these variables configure (`HTTPS_PROXY`…), for a pull's options;
    /// the error names the malformed variable's value.
    pub fn proxy(&self) -> Result<Option<std::sync::Arc<crate::http::proxy::ProxyConfig>>, String> {
        crate::http::proxy::ProxyConfig::from_env(|n| self.get(n).map(str::to_owned))
            .map(|p| p.map(std::sync::Arc::new))
    }

    /// Every variable, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// This environment with KServe's storage spec applied, as its storage-initializer does
    /// before each download: `STORAGE_CONFIG` (the `storage-config` Secret's entry, JSON)
    /// with `STORAGE_OVERRIDE_CONFIG` (the InferenceService's parameters) laid over it; for
    /// `"type": "s3"`, each field it sets replaces a variable: `endpoint_url` →
    /// `AWS_ENDPOINT_URL`, `access_key_id` → `AWS_ACCESS_KEY_ID`, `secret_access_key` →
    /// `AWS_SECRET_ACCESS_KEY`, `region` → `AWS_DEFAULT_REGION`, `ca_bundle` →
    /// `AWS_CA_BUNDLE`, `verify_ssl` → `S3_VERIFY_SSL`, `anonymous` →
    /// `awsAnonymousCredential`. Other types (KServe's `hdfs`, `webhdfs`) change nothing.
    /// Errors name the variable or field, never a value: these hold secrets.
    pub fn with_storage_config(mut self) -> crate::Result<Self> {
        let object = |name: &str| -> crate::Result<serde_json::Map<String, serde_json::Value>> {
            match self.get(name) {
                None => Ok(serde_json::Map::new()),
                // The parser's error is dropped: it may quote the secret.
                Some(json) => serde_json::from_str(json).map_err(|_| {
                    crate::Error::InvalidOption(format!("{name} is not a JSON object"))
                }),
            }
        };
        let mut spec = object("STORAGE_CONFIG")?;
        spec.extend(object("STORAGE_OVERRIDE_CONFIG")?);
        if spec.get("type").and_then(|t| t.as_str()) != Some("s3") {
            return Ok(self);
        }
        for (field, var) in S3_STORAGE_SPEC {
            let value = match spec.get(field) {
                None => continue,
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Bool(_) | serde_json::Value::Number(_))) => {
                    v.to_string()
                }
                Some(_) => {
                    return Err(crate::Error::InvalidOption(format!(
                        "the storage spec's `{field}` must be a string"
                    )));
                }
            };
            self.set(var, value);
        }
        Ok(self)
    }

    /// The CA bundle KServe mounts from the ConfigMap its `storageInitializer` config names:
    /// `cabundle.crt` in `CA_BUNDLE_VOLUME_MOUNT_POINT` (default `/etc/ssl/custom-certs`),
    /// when `CA_BUNDLE_CONFIGMAP_NAME` is set.
    pub fn kserve_ca_bundle(&self) -> Option<std::path::PathBuf> {
        self.get("CA_BUNDLE_CONFIGMAP_NAME")?;
        let mount = self
            .get("CA_BUNDLE_VOLUME_MOUNT_POINT")
            .unwrap_or("/etc/ssl/custom-certs");
        Some(std::path::Path::new(mount).join("cabundle.crt"))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_the_python_stores() {
        let env: Env = [
            ("S3_USE_HTTPS", "0"),
            ("S3_VERIFY_SSL", "False"),
            ("awsAnonymousCredential", "true"),
            ("EMPTY", " "),
            ("AWS_SECRET_ACCESS_KEY", "hunter2"),
            ("h.example-headers", "{}"),
        ]
        .into_iter()
        .collect();
        assert_eq!(env.flag("S3_USE_HTTPS"), Some(false));
        assert_eq!(env.flag("S3_VERIFY_SSL"), Some(false));
        assert_eq!(env.flag("awsAnonymousCredential"), Some(true));
        assert_eq!(env.get("EMPTY"), None);
        assert_eq!(env.first(&["EMPTY", "S3_USE_HTTPS"]), Some("0"));
        assert!(!format!("{env:?}").contains("hunter2"));
    }

    #[test]
    fn the_storage_spec_sets_the_s3_variables_with_overrides_winning() {
        let env: Env = [
            (
                "STORAGE_CONFIG",
                r#"{"type": "s3", "access_key_id": "AKID", "secret_access_key": "s3cret",
                    "endpoint_url": "http://minio:9000", "region": "eu-west-1", "anonymous": false}"#,
            ),
            ("STORAGE_OVERRIDE_CONFIG", r#"{"region": "us-east-2", "verify_ssl": "0"}"#),
            ("AWS_ACCESS_KEY_ID", "from-the-service-account"),
            ("AWS_SESSION_TOKEN", "kept"),
        ]
        .into_iter()
        .collect();
        let env = env.with_storage_config().unwrap();
        assert_eq!(env.get("AWS_ACCESS_KEY_ID"), Some("AKID"));
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), Some("s3cret"));
        assert_eq!(env.get("AWS_ENDPOINT_URL"), Some("http://minio:9000"));
        assert_eq!(env.get("AWS_DEFAULT_REGION"), Some("us-east-2"));
        assert_eq!(env.get("S3_VERIFY_SSL"), Some("0"));
        assert_eq!(env.flag("awsAnonymousCredential"), Some(false));
        assert_eq!(env.get("AWS_SESSION_TOKEN"), Some("kept"));
        assert_eq!(env.get("AWS_CA_BUNDLE"), None);
    }

    #[test]
    fn other_storage_types_and_no_spec_change_nothing() {
        let plain: Env = [("AWS_ACCESS_KEY_ID", "a")].into_iter().collect();
        assert_eq!(plain.clone().with_storage_config().unwrap(), plain);
        let hdfs: Env = [(
            "STORAGE_CONFIG",
            r#"{"type": "hdfs", "HDFS_NAMENODE": "nn"}"#,
        )]
        .into_iter()
        .collect();
        assert_eq!(hdfs.clone().with_storage_config().unwrap(), hdfs);
    }

    #[test]
    fn a_malformed_storage_spec_is_refused_without_its_value() {
        for (name, value, says) in [
            (
                "STORAGE_CONFIG",
                "{\"type\": \"s3\", \"secret_access_key\": hunter2",
                "STORAGE_CONFIG is not a JSON object",
            ),
            (
                "STORAGE_OVERRIDE_CONFIG",
                "[\"hunter2\"]",
                "STORAGE_OVERRIDE_CONFIG is not a JSON object",
            ),
            (
                "STORAGE_CONFIG",
                r#"{"type": "s3", "access_key_id": ["hunter2"]}"#,
                "`access_key_id` must be a string",
            ),
        ] {
            let env: Env = [(name, value)].into_iter().collect();
            let err = env.with_storage_config().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_ca_bundle_configmap_is_read_from_its_mount() {
        assert_eq!(Env::default().kserve_ca_bundle(), None);
        let named: Env = [("CA_BUNDLE_CONFIGMAP_NAME", "global-ca-bundle")]
            .into_iter()
            .collect();
        assert_eq!(
            named.kserve_ca_bundle().unwrap(),
            std::path::Path::new("/etc/ssl/custom-certs/cabundle.crt")
        );
        let mut mounted = named;
        mounted.set("CA_BUNDLE_VOLUME_MOUNT_POINT", "/certs");
        assert_eq!(
            mounted.kserve_ca_bundle().unwrap(),
            std::path::Path::new("/certs/cabundle.crt")
        );
    }
}
