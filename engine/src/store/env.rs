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
}
