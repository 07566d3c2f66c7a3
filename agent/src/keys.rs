//! Names KServe derives from a `LocalModelNode` entry, computed exactly as KServe does, plus
//! the checks KServe lacks.
//!
//! - status key: `modelName`, or `namespace/modelName` for namespace-scoped caches;
//! - storage key: the first 16 hex digits of `sha256(sourceModelUri)`, the URI hashed exactly as
//!   written; the model lives in `<root>/models/<storage key>`.
//!
//! Only directories whose names are storage keys are ever touched by the agent.

use sha2::{Digest, Sha256};

use crate::crd::LocalModelInfo;

/// `modelName` or `namespace/modelName`, the key of `status.modelStatus`.
pub fn status_key(m: &LocalModelInfo) -> String {
    match m.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => format!("{ns}/{}", m.model_name),
        None => m.model_name.clone(),
    }
}

/// `hex(sha256(uri))[:16]`, KServe's `GetStorageKey`.
pub fn storage_key(uri: &str) -> String {
    let digest = Sha256::digest(uri.as_bytes());
    hex::encode(&digest[..8])
}

/// Whether a folder name under `models/` could be a storage key (16 lower-case hex digits).
pub fn is_storage_key(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why an entry cannot be served as written. The names are kept escaped, so a name with
/// control characters cannot forge lines in a log or an Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InvalidEntry {
    #[error("modelName `{0}` is not a valid Kubernetes object name")]
    ModelName(String),
    #[error("namespace `{0}` is not a valid namespace name")]
    Namespace(String),
    #[error("sourceModelUri is empty")]
    EmptyUri,
}

/// Why an entry cannot be served, if it cannot: names are Kubernetes object names (a DNS
/// subdomain for the model, a DNS label for the namespace); a name with `/` or `..` would make
/// the status key ambiguous.
pub fn check_entry(m: &LocalModelInfo) -> Result<(), InvalidEntry> {
    if !is_dns_subdomain(&m.model_name) {
        return Err(InvalidEntry::ModelName(
            m.model_name.escape_debug().to_string(),
        ));
    }
    if let Some(ns) = m.namespace.as_deref().filter(|n| !n.is_empty())
        && !is_dns_label(ns)
    {
        return Err(InvalidEntry::Namespace(ns.escape_debug().to_string()));
    }
    if m.source_model_uri.trim().is_empty() {
        return Err(InvalidEntry::EmptyUri);
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, ns: Option<&str>) -> LocalModelInfo {
        LocalModelInfo {
            source_model_uri: "hf://a/b".into(),
            model_name: name.into(),
            namespace: ns.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn keys_as_kserve() {
        // printf %s URI | sha256sum | cut -c1-16
        assert_eq!(
            storage_key("gs://kfserving-examples/models/sklearn/1.0/model"),
            "379edc91f9c1bc7b"
        );
        assert_eq!(
            storage_key("hf://meta-llama/Llama-3.1-8B"),
            "8cfeccad26e6d1c0"
        );
        assert_ne!(storage_key("s3://b/m"), storage_key("s3://b/m/"));
        assert!(is_storage_key(&storage_key("hf://a/b")));
        assert!(!is_storage_key("llama"));
        assert!(!is_storage_key("0123456789ABCDEF"));
        assert_eq!(status_key(&info("llama", None)), "llama");
        assert_eq!(status_key(&info("llama", Some("team-a"))), "team-a/llama");
        assert_eq!(status_key(&info("llama", Some(""))), "llama");
    }

    #[test]
    fn entry_names() {
        assert!(check_entry(&info("llama-3.1", Some("team-a"))).is_ok());
        for bad in ["a/b", "..", "", "UPPER", "-x", &"x".repeat(254)] {
            assert!(check_entry(&info(bad, None)).is_err(), "{bad}");
        }
        assert_eq!(
            check_entry(&info("ok", Some("a/b"))),
            Err(InvalidEntry::Namespace("a/b".into()))
        );
        assert_eq!(
            check_entry(&info("a\nb", None)).unwrap_err().to_string(),
            "modelName `a\\nb` is not a valid Kubernetes object name",
            "escaped"
        );
    }
}
