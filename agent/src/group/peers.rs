//! Who else keeps a model: the nodes whose LocalModelNode lists the same source URI (KServe's
//! localmodel controller writes one per node of the group), what each says of it in its status,
//! and where each node's agent serves its peers — the EndpointSlices of the headless Service
//! that selects the agents' pods (`--peer-service`), which carry each pod's node name.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use url::Url;

use crate::crd::{LocalModelInfo, LocalModelNode, ModelStatus};
use crate::keys;

/// Another node's agent that keeps the same model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// Where its peer server has the model: `http://ADDRESS:PORT/models/<key>/`.
    pub base: Url,
    /// What its LocalModelNode's status says of the model.
    pub status: Option<ModelStatus>,
}

/// The nodes that keep the model (this one among them), sorted, and the peers among them that
/// serve it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub nodes: Vec<String>,
    pub peers: Vec<Peer>,
}

/// Finds the group of `entry` (stored at `key`) as seen from `own_node`.
pub async fn find(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    own_node: &str,
    key: &str,
    entry: &LocalModelInfo,
) -> kube::Result<Group> {
    let nodes: Api<LocalModelNode> = Api::all(client.clone());
    let lmns = nodes.list(&ListParams::default()).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let selector = format!("kubernetes.io/service-name={service}");
    let slices = slices
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(group_of(&lmns.items, &slices.items, own_node, key, entry))
}

/// [`find`] on objects already read.
pub fn group_of(
    lmns: &[LocalModelNode],
    slices: &[EndpointSlice],
    own_node: &str,
    key: &str,
    entry: &LocalModelInfo,
) -> Group {
    let status_key = keys::status_key(entry);
    let mut keeping: BTreeMap<String, Option<ModelStatus>> = lmns
        .iter()
        .filter(|n| {
            n.spec
                .local_models
                .iter()
                .any(|m| m.source_model_uri == entry.source_model_uri)
        })
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let status = n
                .status
                .as_ref()
                .and_then(|s| s.model_status.as_ref()?.get(&status_key).copied());
            Some((name, status))
        })
        .collect();
    keeping.entry(own_node.to_owned()).or_insert(None);
    let mut served = BTreeMap::new();
    for slice in slices {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("peer"))
            .or_else(|| slice.ports.iter().flatten().next())
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            let (Some(node), Some(address)) = (&ep.node_name, ep.addresses.first()) else {
                continue;
            };
            if !ready || node == own_node || !keeping.contains_key(node) {
                continue;
            }
            let host = match address.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => address.clone(),
            };
            if let Ok(base) = Url::parse(&format!("http://{host}:{port}/models/{key}/")) {
                served.entry(node.clone()).or_insert(base);
            }
        }
    }
    let peers = served
        .into_iter()
        .map(|(node, base)| Peer {
            status: keeping.get(&node).copied().flatten(),
            node,
            base,
        })
        .collect();
    Group {
        nodes: keeping.into_keys().collect(),
        peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LocalModelNodeSpec, LocalModelNodeStatus};

    fn lmn(name: &str, uris: &[&str], status: Option<ModelStatus>) -> LocalModelNode {
        let mut n = LocalModelNode {
            spec: LocalModelNodeSpec {
                local_models: uris
                    .iter()
                    .map(|u| LocalModelInfo {
                        source_model_uri: (*u).into(),
                        model_name: "llama".into(),
                        ..LocalModelInfo::default()
                    })
                    .collect(),
            },
            status: status.map(|s| LocalModelNodeStatus {
                model_status: Some([("llama".to_owned(), s)].into()),
            }),
            ..LocalModelNode::default()
        };
        n.metadata.name = Some(name.into());
        n
    }

    fn slice(endpoints: &[(&str, &str, Option<bool>)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agents-x"},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 8080}, {"name": "peer", "port": 8082}],
            "endpoints": endpoints.iter().map(|(node, ip, ready)| serde_json::json!({
                "addresses": [ip], "nodeName": node, "conditions": {"ready": ready},
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn the_group_is_the_nodes_keeping_the_uri_and_the_peers_those_serving() {
        let uri = "hf://org/llama";
        let entry = LocalModelInfo {
            source_model_uri: uri.into(),
            model_name: "llama".into(),
            ..LocalModelInfo::default()
        };
        let lmns = [
            lmn("gpu-c", &[uri], Some(ModelStatus::Downloaded)),
            lmn("gpu-a", &[uri], None),
            lmn(
                "gpu-b",
                &[uri, "s3://other"],
                Some(ModelStatus::Downloading),
            ),
            lmn("cpu-1", &["s3://other"], None),
            lmn("gpu-d", &[uri], None),
        ];
        let slices = [slice(&[
            ("gpu-a", "10.0.0.1", Some(true)),
            ("gpu-b", "10.0.0.2", Some(true)),
            ("gpu-c", "10.0.0.3", None),
            ("gpu-d", "10.0.0.4", Some(false)),
            ("cpu-1", "10.0.0.5", Some(true)),
        ])];
        let g = group_of(&lmns, &slices, "gpu-a", "0123456789abcdef", &entry);
        assert_eq!(g.nodes, ["gpu-a", "gpu-b", "gpu-c", "gpu-d"]);
        let peers: Vec<(&str, &str, Option<ModelStatus>)> = g
            .peers
            .iter()
            .map(|p| (p.node.as_str(), p.base.as_str(), p.status))
            .collect();
        assert_eq!(
            peers,
            [
                (
                    "gpu-b",
                    "http://10.0.0.2:8082/models/0123456789abcdef/",
                    Some(ModelStatus::Downloading)
                ),
                (
                    "gpu-c",
                    "http://10.0.0.3:8082/models/0123456789abcdef/",
                    Some(ModelStatus::Downloaded)
                ),
            ]
        );
    }

    #[test]
    fn a_node_alone_is_its_own_group() {
        let entry = LocalModelInfo {
            source_model_uri: "hf://org/llama".into(),
            model_name: "llama".into(),
            ..LocalModelInfo::default()
        };
        let g = group_of(&[], &[], "gpu-a", "0123456789abcdef", &entry);
        assert_eq!(g.nodes, ["gpu-a"]);
        assert!(g.peers.is_empty());
    }
}
