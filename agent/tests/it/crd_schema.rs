//! The Rust types match KServe's CRD (deploy/crds/, copied verbatim from KServe): every field
//! the schema has, the types carry (a fully populated object uses every schema property), and
//! everything the agent writes validates against the schema (types, required fields, enums,
//! no unknown fields).

use std::collections::BTreeMap;

use crate::util::schema::{schema, validate};
use localmodelnode_agent::crd::{
    LocalModelInfo, LocalModelNode, LocalModelNodeSpec, LocalModelNodeStatus,
    LocalModelStorageSpec, ModelStatus,
};
use serde_json::Value;

/// Every property path the schema declares (`a.b[].c`, maps as `{}`).
fn schema_paths(s: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(props) = s["properties"].as_object() {
        for (k, child) in props {
            let path = format!("{at}.{k}");
            out.push(path.clone());
            schema_paths(child, &path, out);
        }
    }
    if s["items"].is_object() {
        schema_paths(&s["items"], &format!("{at}[]"), out);
    }
    if s["additionalProperties"].is_object() {
        schema_paths(&s["additionalProperties"], &format!("{at}{{}}"), out);
    }
}

fn value_paths(v: &Value, at: &str, out: &mut Vec<String>, maps: &[&str]) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let path = if maps.contains(&at) {
                    format!("{at}{{}}")
                } else {
                    format!("{at}.{k}")
                };
                out.push(path.clone());
                value_paths(child, &path, out, maps);
            }
        }
        Value::Array(items) => {
            for item in items {
                value_paths(item, &format!("{at}[]"), out, maps);
            }
        }
        _ => {}
    }
}

fn full_object() -> LocalModelNode {
    let mut lmn = LocalModelNode {
        spec: LocalModelNodeSpec {
            local_models: vec![LocalModelInfo {
                source_model_uri: "s3://models/llama/".into(),
                model_name: "llama".into(),
                namespace: Some("team-a".into()),
                node_group: Some("gpu".into()),
                service_account_name: Some("puller".into()),
                storage: Some(LocalModelStorageSpec {
                    key: Some("minio".into()),
                    parameters: Some(BTreeMap::from([("bucket".into(), "models".into())])),
                }),
            }],
        },
        status: Some(LocalModelNodeStatus {
            model_status: Some(
                ModelStatus::ALL
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("m{i}"), *s))
                    .collect(),
            ),
        }),
        ..Default::default()
    };
    lmn.metadata.name = Some("gpu-node-1".into());
    lmn
}

#[test]
fn what_the_agent_writes_validates() {
    let schema = schema();
    let mut v = serde_json::to_value(full_object()).unwrap();
    v["apiVersion"] = "serving.kserve.io/v1alpha1".into();
    v["kind"] = "LocalModelNode".into();
    let mut errors = Vec::new();
    validate(&v, &schema, "", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");

    // A status with a value outside the enum, or a misspelt field, is caught.
    let mut bad = v.clone();
    bad["status"]["modelStatus"]["x"] = "Downloaded".into();
    bad["spec"]["localModels"][0]["sourceModelURI"] = "s3://x".into();
    let mut errors = Vec::new();
    validate(&bad, &schema, "", &mut errors);
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

#[test]
fn the_types_carry_every_schema_field() {
    let schema = schema();
    let mut declared = Vec::new();
    schema_paths(&schema, "", &mut declared);
    let mut used = Vec::new();
    let mut v = serde_json::to_value(full_object()).unwrap();
    v["apiVersion"] = "x".into();
    v["kind"] = "x".into();
    value_paths(
        &v,
        "",
        &mut used,
        &[
            ".status.modelStatus",
            ".spec.localModels[].storage.parameters",
        ],
    );
    for path in &declared {
        assert!(used.contains(path), "the types do not carry `{path}`");
    }
}
