//! modelpull as KServe's storage-initializer, as deploy/ installs it: the kustomize component
//! changes nothing in KServe's two objects but the image (and the ClusterStorageContainer's
//! securityContext), so the ConfigMap keeps every key and its `storageInitializer` JSON every
//! setting KServe ships; the Helm value renders the same ClusterStorageContainer; each
//! validates against the CRD. KServe's objects come from a stand-in install in `kserve/`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{by_name, chart, deploy, kustomize_at, parse_all};
use crate::util::schema::{crd, validate};

/// The stand-in KServe install, with the component added.
fn kserve() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/deploy/kserve")
}

fn object(path: PathBuf) -> Value {
    let mut objects = parse_all(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(objects.len(), 1, "{}", path.display());
    objects.remove(0)
}

/// KServe's object in `file`, as shipped.
fn shipped(file: &str) -> Value {
    object(kserve().join(file))
}

/// The component's patch in `file`.
fn patch(file: &str) -> Value {
    object(deploy().join("components/storage-initializer").join(file))
}

/// The `storageInitializer` settings of an `inferenceservice-config` ConfigMap.
fn settings(config_map: &Value) -> Value {
    serde_json::from_str(config_map["data"]["storageInitializer"].as_str().unwrap()).unwrap()
}

/// The image the component sets, the same in both of its patches.
fn image() -> Value {
    let image = patch("clusterstoragecontainer.yaml")["spec"]["container"]["image"].clone();
    assert_eq!(
        settings(&patch("inferenceservice-config.yaml"))["image"],
        image,
        "both patches name the same image"
    );
    assert!(image.is_string());
    image
}

/// KServe's `default` ClusterStorageContainer as the component leaves it.
fn patched_storage_container() -> Value {
    let mut csc = shipped("clusterstoragecontainer.yaml");
    let container = &patch("clusterstoragecontainer.yaml")["spec"]["container"];
    csc["spec"]["container"]["image"] = container["image"].clone();
    csc["spec"]["container"]["securityContext"] = container["securityContext"].clone();
    csc
}

fn assert_valid(csc: &Value) {
    let crd = crd("clusterstoragecontainers");
    assert_eq!(crd["spec"]["names"]["kind"], "ClusterStorageContainer");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let mut errors = Vec::new();
    validate(
        csc,
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        "",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_configmap_patch_holds_kserves_settings_with_only_the_image_changed() {
    // A patch replaces the key's JSON whole: whatever it leaves out, KServe loses.
    let mut want = settings(&shipped("inferenceservice-config.yaml"));
    assert_ne!(want["image"], image());
    want["image"] = image();
    assert_eq!(settings(&patch("inferenceservice-config.yaml")), want);
}

#[test]
fn kserves_own_storage_container_validates_against_the_crd() {
    assert_valid(&shipped("clusterstoragecontainer.yaml"));
}

#[test]
fn the_component_changes_only_the_image_of_kserves_objects() {
    let Some(rendered) = kustomize_at(&kserve()) else {
        return;
    };
    assert_eq!(rendered.len(), 2);
    let config_map = by_name(&rendered, "ConfigMap", "inferenceservice-config");
    let original = shipped("inferenceservice-config.yaml");
    let keys = |cm: &Value| {
        cm["data"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(config_map), keys(&original));
    for key in keys(&original) {
        if key != "storageInitializer" {
            assert_eq!(config_map["data"][&key], original["data"][&key], "{key}");
        }
    }
    let mut want = settings(&original);
    want["image"] = image();
    assert_eq!(settings(config_map), want);

    let csc = by_name(&rendered, "ClusterStorageContainer", "default");
    assert_eq!(csc, &patched_storage_container());
    assert_valid(csc);
}

#[test]
fn the_helm_value_renders_the_same_storage_container() {
    let (_, chart) = chart();
    assert!(
        !chart
            .render("agent", "kserve", &json!({}))
            .iter()
            .any(|o| o["kind"] == "ClusterStorageContainer"),
        "nothing without the value"
    );
    let image = "registry.example/modelpull-storage-initializer:0.1.0";
    let rendered = chart.render(
        "agent",
        "kserve",
        &json!({"storageInitializer": {"image": image}}),
    );
    let csc = by_name(&rendered, "ClusterStorageContainer", "default");
    assert_valid(csc);
    let mut want = patched_storage_container();
    want["spec"]["container"]["image"] = json!(image);
    assert_eq!(csc["spec"], want["spec"]);
    assert_eq!(
        csc["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "modelpull"
    );
}
