//! The example objects in deploy/examples/ are valid for KServe's CRDs: an operator can apply
//! them as they are.

use std::path::Path;

use crate::util::schema::{crd, validate};
use serde_json::Value;

#[test]
fn every_example_validates_against_its_crd() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = object["kind"].as_str().unwrap().to_owned();
            let plural = format!("{}s", kind.to_ascii_lowercase());
            let crd = crd(&plural);
            assert_eq!(crd["spec"]["names"]["kind"], kind.as_str());
            let version = object["apiVersion"].as_str().unwrap();
            let served = crd["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| format!("serving.kserve.io/{}", v["name"].as_str().unwrap()) == version)
                .unwrap_or_else(|| panic!("{version} is not a version of {kind}"));
            let mut errors = Vec::new();
            validate(
                &object,
                &served["schema"]["openAPIV3Schema"],
                "",
                &mut errors,
            );
            assert!(errors.is_empty(), "{}: {errors:#?}", entry.path().display());
            checked.push(kind);
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        ["LocalModelCache", "LocalModelNode", "LocalModelNodeGroup"]
    );
}
