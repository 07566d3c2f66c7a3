//! The agent in KServe's own DaemonSet, as deploy/components/kserve-daemonset patches it: the
//! container `manager` gets the image, resources the agent fits in and probes; nothing else of
//! KServe's DaemonSet changes; KServe's ServiceAccount gets the Events rule of our own RBAC.
//! The resources are those of our base and chart, and they fit the default buffers by the
//! agent's own sizing rule, with no CPU limit. KServe's DaemonSet comes from a stand-in
//! install in `kserve-agent/`.

use std::path::{Path, PathBuf};

use localmodelnode_agent::fit::{self, Requested};
use modelpull::limits::Limits;
use serde_json::{Value, json};

use super::{base, by_name, chart, deploy, find, kustomize_at, parse_all};

/// The stand-in KServe install, with the component added.
fn kserve() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/deploy/kserve-agent")
}

fn shipped() -> Value {
    let text = std::fs::read_to_string(kserve().join("daemonset.yaml")).unwrap();
    parse_all(&text).remove(0)
}

/// The component's DaemonSet patch.
fn patch() -> Value {
    let dir = deploy().join("components/kserve-daemonset");
    parse_all(&std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap()).remove(0)
}

fn container(ds: &Value) -> &Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{ds}");
    &containers[0]
}

/// `512Mi`, `1Gi`, `300M` in bytes.
fn quantity(q: &Value) -> u64 {
    let q = q.as_str().unwrap();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let unit = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => panic!("unit of {q}"),
    };
    n.parse::<u64>().unwrap() * unit
}

#[test]
fn the_component_changes_only_the_agents_container_and_adds_events() {
    let Some(rendered) = kustomize_at(&kserve()) else {
        return;
    };
    assert_eq!(rendered.len(), 3, "the DaemonSet and the Events RBAC");
    let ds = by_name(&rendered, "DaemonSet", "kserve-localmodelnode-agent");
    let c = container(ds);
    assert_eq!(c["name"], "manager");
    assert_eq!(
        c["image"],
        patch()["spec"]["template"]["spec"]["containers"][0]["image"]
    );
    assert_eq!(
        c["command"],
        json!(["/manager"]),
        "the agent's image has /manager"
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}),
        "KServe's CPU limit is gone"
    );
    // Probes and ports as in our own DaemonSet.
    let ours = container(find(&base(), "DaemonSet")).clone();
    for field in ["ports", "livenessProbe", "readinessProbe", "resources"] {
        assert_eq!(c[field], ours[field], "{field}");
    }
    // Everything else is KServe's.
    let mut rest = ds.clone();
    let mut want = shipped();
    for ds in [&mut rest, &mut want] {
        let c = &mut ds["spec"]["template"]["spec"]["containers"][0];
        for field in [
            "image",
            "resources",
            "ports",
            "livenessProbe",
            "readinessProbe",
        ] {
            c.as_object_mut().unwrap().remove(field);
        }
    }
    assert_eq!(rest, want);

    // KServe's ServiceAccount gets the Events rule of deploy/base/rbac.yaml, nothing more.
    let role = by_name(&rendered, "ClusterRole", "localmodelnode-agent-events");
    let base_role = by_name(&base(), "ClusterRole", "localmodelnode-agent").clone();
    let events_rule = base_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"] == json!(["events"]))
        .unwrap()
        .clone();
    assert_eq!(role["rules"], json!([events_rule]));
    let binding = by_name(
        &rendered,
        "ClusterRoleBinding",
        "localmodelnode-agent-events",
    );
    assert_eq!(binding["roleRef"]["name"], "localmodelnode-agent-events");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": ds["spec"]["template"]["spec"]["serviceAccountName"], "namespace": "kserve"}])
    );
    for o in &rendered {
        if o["kind"] != "DaemonSet" {
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/part-of"], "modelpull",
                "a rollback finds it: {o}"
            );
        }
    }
}

#[test]
fn the_patched_resources_fit_the_default_buffers_without_a_cpu_limit() {
    let resources = &patch()["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert!(
        resources["limits"]["cpu"].is_null(),
        "the patch removes KServe's CPU limit: {resources}"
    );
    let limit = quantity(&resources["limits"]["memory"]);
    assert_eq!(
        quantity(&resources["requests"]["memory"]),
        limit,
        "memory is requested whole"
    );
    assert!(
        quantity(&resources["requests"]["cpu"]) >= 1,
        "a CPU: about 1 GB/s"
    );
    // The agent's own rule, with the resident set it starts with (about 12 MiB, debug
    // builds more): the default buffers, both downloads, no warning.
    let fitted = fit::fit(
        Requested {
            memory_limit: None,
            concurrent: 2,
            connections: None,
            max_connections: 256,
        },
        &Limits {
            memory: Some(limit),
            cpu: None,
        },
        32 << 20,
        2 << 20,
    );
    assert_eq!(fitted.memory_limit, fit::DEFAULT_BUFFERS);
    assert_eq!((fitted.concurrent, fitted.connections), (2, 94));
    assert!(
        fitted.notes.iter().all(|n| matches!(n, fit::Note::Info(_))),
        "{:?}",
        fitted.notes
    );
    // KServe's own 300Mi still fit them, with less to spare.
    let kserve = container(&shipped())["resources"]["limits"]["memory"].clone();
    assert_eq!(quantity(&kserve), 300 << 20);
}

#[test]
fn the_base_and_the_chart_ask_for_the_same_resources() {
    let patched = patch()["spec"]["template"]["spec"]["containers"][0]["resources"].clone();
    let mut want = patched.clone();
    want["limits"].as_object_mut().unwrap().remove("cpu");
    assert_eq!(container(find(&base(), "DaemonSet"))["resources"], want);
    let (_, chart) = chart();
    let rendered = chart.render("agent", "kserve", &json!({}));
    let ds = by_name(&rendered, "DaemonSet", "kserve-localmodelnode-agent");
    assert_eq!(container(ds)["resources"], want);
    let args = container(ds)["args"].as_array().unwrap().clone();
    assert!(
        !args
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("--memory-limit")),
        "the agent sizes its buffers under the limit by itself: {args:?}"
    );
}

/// Runs the component's Helm post-renderer over `rendered` with `image`; `None` without
/// kubectl (a failure when servers are required).
fn post_render(rendered: &str, image: Option<&str>) -> Option<Vec<Value>> {
    use std::io::Write;
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        modelpull_testkit::servers::missing("kubectl (for the Helm post-renderer)")?;
        return None;
    }
    let script = deploy().join("components/kserve-daemonset/helm-post-renderer");
    let mut command = std::process::Command::new(script);
    command
        .env_remove("MODELPULL_AGENT_IMAGE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(image) = image {
        command.env("MODELPULL_AGENT_IMAGE", image);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rendered.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(parse_all(&String::from_utf8(out.stdout).unwrap()))
}

#[test]
fn the_helm_post_renderer_applies_the_component_to_a_chart_render() {
    // What KServe's chart renders: its DaemonSet among its other objects, as Helm hands them
    // to a post-renderer (documents separated by `---`, with the chart's own image).
    let daemonset = std::fs::read_to_string(kserve().join("daemonset.yaml"))
        .unwrap()
        .replace(
            "image: kserve/kserve-localmodelnode-agent:latest",
            "image: kserve/kserve-localmodelnode-agent:v0.20.0",
        );
    assert!(daemonset.contains("v0.20.0"));
    let other = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: kserve-localmodelnode-agent\n  namespace: kserve\n";
    let rendered = format!(
        "---\n# Source: kserve-localmodel-resources/templates/a.yaml\n{other}---\n{daemonset}"
    );
    let Some(out) = post_render(&rendered, Some("registry.example:5000/mp/agent:v1")) else {
        return;
    };
    let Some(component) = kustomize_at(&kserve()) else {
        return;
    };
    // The component's objects, the chart's others untouched, the image the variable names.
    assert_eq!(out.len(), component.len() + 1, "{out:?}");
    let sa = by_name(&out, "ServiceAccount", "kserve-localmodelnode-agent");
    assert_eq!(*sa, parse_all(other).remove(0));
    let ds = by_name(&out, "DaemonSet", "kserve-localmodelnode-agent");
    assert_eq!(container(ds)["image"], "registry.example:5000/mp/agent:v1");
    let mut expected = by_name(&component, "DaemonSet", "kserve-localmodelnode-agent").clone();
    expected["spec"]["template"]["spec"]["containers"][0]["image"] =
        "registry.example:5000/mp/agent:v1".into();
    assert_eq!(*ds, expected);
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        assert_eq!(
            by_name(&out, kind, "localmodelnode-agent-events"),
            by_name(&component, kind, "localmodelnode-agent-events")
        );
    }

    // A digest, and no variable: the image daemonset.yaml sets.
    let digest = format!("registry.example/mp/agent@sha256:{}", "a".repeat(64));
    let out = post_render(&rendered, Some(&digest)).unwrap();
    let ds = by_name(&out, "DaemonSet", "kserve-localmodelnode-agent");
    assert_eq!(container(ds)["image"], digest.as_str());
    let out = post_render(&rendered, None).unwrap();
    let ds = by_name(&out, "DaemonSet", "kserve-localmodelnode-agent");
    assert_eq!(
        container(ds)["image"],
        patch()["spec"]["template"]["spec"]["containers"][0]["image"]
    );
}
