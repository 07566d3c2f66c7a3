//! KServe's `LocalModelNode` (`serving.kserve.io/v1alpha1`, cluster-scoped, named after its
//! node), field for field as in KServe's CRD, so that objects written by KServe's controller
//! read here and status written here validates there. `tests/crd_schema.rs` checks these
//! types against the CRD YAML.
//!
//! `kube::Resource` is implemented by hand rather than derived: the derive would also need a
//! JSON-schema generator, and the schema is KServe's, not ours.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::ClusterResourceScope;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "serving.kserve.io";
pub const VERSION: &str = "v1alpha1";

/// A node's list of models to keep on its disk, and their state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalModelNode {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: LocalModelNodeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<LocalModelNodeStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalModelNodeSpec {
    pub local_models: Vec<LocalModelInfo>,
}

/// One model a `LocalModelCache` (or `LocalModelNamespaceCache`) asks this node to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalModelInfo {
    pub source_model_uri: String,
    pub model_name: String,
    /// Set for namespace-scoped caches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<LocalModelStorageSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalModelStorageSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalModelNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_status: Option<BTreeMap<String, ModelStatus>>,
}

/// KServe's per-model state, spelled as KServe spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ModelStatus {
    #[serde(rename = "")]
    Unknown,
    #[serde(rename = "ModelDownloadPending")]
    Pending,
    #[serde(rename = "ModelDownloading")]
    Downloading,
    #[serde(rename = "ModelDownloaded")]
    Downloaded,
    #[serde(rename = "ModelDownloadError")]
    Error,
}

impl ModelStatus {
    /// Every value, as the CRD's enum lists them.
    pub const ALL: [ModelStatus; 5] = [
        ModelStatus::Unknown,
        ModelStatus::Pending,
        ModelStatus::Downloading,
        ModelStatus::Downloaded,
        ModelStatus::Error,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Unknown => "",
            ModelStatus::Pending => "ModelDownloadPending",
            ModelStatus::Downloading => "ModelDownloading",
            ModelStatus::Downloaded => "ModelDownloaded",
            ModelStatus::Error => "ModelDownloadError",
        }
    }
}

impl Resource for LocalModelNode {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "LocalModelNode".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "localmodelnodes".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_kserve_writes() {
        let json = r#"{
            "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
            "metadata": {"name": "gpu-node-1", "resourceVersion": "7"},
            "spec": {"localModels": [
                {"sourceModelUri": "hf://meta-llama/Llama-3.1-8B", "modelName": "llama",
                 "nodeGroup": "gpu", "serviceAccountName": "hf-sa"},
                {"sourceModelUri": "s3://models/bert/", "modelName": "bert", "namespace": "team-a",
                 "storage": {"key": "localMinIO", "parameters": {"bucket": "models"}}}
            ]},
            "status": {"modelStatus": {"llama": "ModelDownloaded", "team-a/bert": ""}}
        }"#;
        let lmn: LocalModelNode = serde_json::from_str(json).unwrap();
        assert_eq!(lmn.spec.local_models.len(), 2);
        assert_eq!(
            lmn.spec.local_models[1].namespace.as_deref(),
            Some("team-a")
        );
        let status = lmn.status.unwrap().model_status.unwrap();
        assert_eq!(status["llama"], ModelStatus::Downloaded);
        assert_eq!(status["team-a/bert"], ModelStatus::Unknown);
        for s in ModelStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
