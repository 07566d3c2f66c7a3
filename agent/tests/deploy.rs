//! The kustomize base in deploy/base/ holds what its kustomization lists, every object parses,
//! and the DaemonSet keeps the promises the agent relies on: the downward-API env, the models
//! volume at /mnt/models, probes on 8081, a non-root, read-only, capability-free container,
//! and the node selector of KServe's agent.

use std::path::Path;

use serde_json::Value;

fn base() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    let kustomization: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut objects = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let text = std::fs::read_to_string(dir.join(file.as_str().unwrap())).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            assert!(v["apiVersion"].is_string() && v["kind"].is_string(), "{v}");
            assert!(v["metadata"]["name"].is_string(), "{v}");
            objects.push(v);
        }
    }
    objects
}

#[test]
fn the_daemonset_keeps_its_promises() {
    let objects = base();
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["kserve/localmodel"], "worker");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["seccompProfile"]["type"].is_string());
    let sa = pod["serviceAccountName"].as_str().unwrap();
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == sa),
        "the ServiceAccount {sa} is part of the base"
    );
    let c = &pod["containers"][0];
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or(""),
            )
        })
        .collect();
    assert!(env.contains(&("NODE_NAME", "spec.nodeName")));
    assert!(env.contains(&("POD_NAMESPACE", "metadata.namespace")));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let ports: Vec<i64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 8081]);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/mnt/models");
    assert!(pod["volumes"][0]["hostPath"]["path"].is_string());
}
