//! Checks that every API request the agent made is allowed by the RBAC rules shipped in
//! deploy/base/rbac.yaml (ClusterRoles everywhere, Roles in their namespace), with those of the
//! components a test turns on.

use std::path::Path;

use serde_json::Value;

#[derive(Debug)]
struct Rule {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The rules of deploy/base/rbac.yaml and of `extra` (paths under deploy/).
fn rules(extra: &[&str]) -> Vec<Rule> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let text: String = std::iter::once("base/rbac.yaml")
        .chain(extra.iter().copied())
        .map(|f| std::fs::read_to_string(deploy.join(f)).unwrap() + "\n---\n")
        .collect();
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let namespace = match v["kind"].as_str() {
            Some("ClusterRole") => None,
            Some("Role") => Some(v["metadata"]["namespace"].as_str().unwrap().to_owned()),
            _ => continue,
        };
        for r in v["rules"].as_array().unwrap() {
            out.push(Rule {
                namespace: namespace.clone(),
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                names: strings(&r["resourceNames"]),
                verbs: strings(&r["verbs"]),
            });
        }
    }
    out
}

/// What RBAC decides on for one request.
struct Attributes {
    group: String,
    namespace: Option<String>,
    /// With the subresource: `localmodelnodes/status`.
    resource: String,
    name: Option<String>,
    verb: String,
}

/// The attributes of an API request; `None` for non-resource URLs (`/version`, discovery),
/// which every authenticated client may read.
fn attributes(r: &Value) -> Option<Attributes> {
    let path = r["path"].as_str()?;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (resource, name) = match rest {
        [res] => ((*res).to_owned(), None),
        [res, name] => ((*res).to_owned(), Some((*name).to_owned())),
        [res, name, sub] => (format!("{res}/{sub}"), Some((*name).to_owned())),
        _ => return None,
    };
    let watch = r["query"]
        .as_str()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match (r["method"].as_str()?, &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => return None,
    };
    Some(Attributes {
        group,
        namespace,
        resource,
        name,
        verb: verb.to_owned(),
    })
}

/// Panics naming every request of the agent that the shipped rules do not allow. Requests
/// the test itself made are told apart by `agent_requests`, which keeps the agent's.
pub fn assert_allowed(requests: &[Value]) {
    assert_allowed_with(requests, &[]);
}

/// [`assert_allowed`] with the rules of the RBAC files `extra` too (paths under deploy/).
pub fn assert_allowed_with(requests: &[Value], extra: &[&str]) {
    let rules = rules(extra);
    let mut denied = Vec::new();
    let mut checked = Vec::new();
    for r in requests {
        let Some(Attributes {
            group,
            namespace: ns,
            resource,
            name,
            verb,
        }) = attributes(r)
        else {
            continue;
        };
        let allowed = rules.iter().any(|rule| {
            rule.groups.contains(&group)
                && rule.resources.contains(&resource)
                && rule.verbs.contains(&verb)
                && (rule.names.is_empty() || name.as_ref().is_some_and(|n| rule.names.contains(n)))
                && (rule.namespace.is_none() || rule.namespace == ns)
        });
        let line = format!("{verb} {group}/{resource} {ns:?}");
        if !allowed {
            denied.push(format!("{line} {name:?}"));
        }
        checked.push(line);
    }
    checked.sort();
    checked.dedup();
    eprintln!("requests checked against the RBAC rules: {checked:#?}");
    assert!(
        checked.len() >= 5,
        "too few kinds of requests to check: {checked:?}"
    );
    denied.sort();
    denied.dedup();
    assert!(
        denied.is_empty(),
        "requests the RBAC rules do not allow: {denied:#?}"
    );
}
