//! KServe's CRD schemas (deploy/crds/) and a validator for the structural OpenAPI subset
//! CRDs use.

use std::path::Path;

use serde_json::Value;

/// The LocalModelNode schema, with the CRD's identity checked.
pub fn schema() -> Value {
    let crd = crd("localmodelnodes");
    assert_eq!(crd["spec"]["group"], "serving.kserve.io");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    version["schema"]["openAPIV3Schema"].clone()
}

/// KServe's CRD for `plural` (deploy/crds/).
pub fn crd(plural: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../deploy/crds/serving.kserve.io_{plural}.yaml"));
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Validates `v` against a structural OpenAPI v3 schema (the subset CRDs use).
pub fn validate(v: &Value, s: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(values) = s["enum"].as_array()
        && !values.contains(v)
    {
        errors.push(format!("{at}: {v} is not one of {values:?}"));
    }
    match s["type"].as_str() {
        Some("object") => {
            let Some(map) = v.as_object() else {
                errors.push(format!("{at}: not an object"));
                return;
            };
            for r in s["required"].as_array().into_iter().flatten() {
                if !map.contains_key(r.as_str().unwrap()) {
                    errors.push(format!("{at}: missing required `{r}`"));
                }
            }
            for (k, child) in map {
                let path = format!("{at}.{k}");
                if let Some(p) = s["properties"].get(k) {
                    validate(child, p, &path, errors);
                } else if s["additionalProperties"].is_object() {
                    validate(child, &s["additionalProperties"], &path, errors);
                } else if s.get("properties").is_some() {
                    errors.push(format!("{path}: not in the schema"));
                }
            }
        }
        Some("array") => match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    validate(item, &s["items"], &format!("{at}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{at}: not an array")),
        },
        Some("string") if !v.is_string() => errors.push(format!("{at}: not a string")),
        Some("integer") if !v.is_i64() && !v.is_u64() => {
            errors.push(format!("{at}: not an integer"))
        }
        Some("boolean") if !v.is_boolean() => errors.push(format!("{at}: not a boolean")),
        _ => {}
    }
}
