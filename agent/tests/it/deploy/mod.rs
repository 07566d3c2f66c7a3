//! What deploy/ installs: the kustomize base and its overlays render with `kubectl kustomize`
//! (read file by file when kubectl is missing, and said so), every object parses, the
//! DaemonSet keeps the promises the agent relies on (downward-API env, the models volume at
//! /mnt/models, probes on 8081, a non-root, read-only, capability-free container, KServe's
//! name, selector and node selector, the io_uring seccomp profile); the seccomp profile allows
//! io_uring and refuses what it does not list; the Helm chart renders the same objects as the
//! kustomize base, with every value it declares used. The storage-initializer's component and
//! Helm value are checked in `storage_initializer`, the patch of KServe's own DaemonSet in
//! `kserve_daemonset`, the overlay and the Helm value that share downloads with the node group
//! in `peers`.

mod helm;
mod kserve_daemonset;
mod peers;
mod storage_initializer;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn parse_all(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .inspect(|v| {
            assert!(v["apiVersion"].is_string() && v["kind"].is_string(), "{v}");
            assert!(v["metadata"]["name"].is_string(), "{v}");
        })
        .collect()
}

/// `kubectl kustomize deploy/<dir>`, or None without kubectl (a failure when servers are
/// required).
fn kustomize(dir: &str) -> Option<Vec<Value>> {
    kustomize_at(&deploy().join(dir))
}

/// `kubectl kustomize <dir>`, or None without kubectl (a failure when servers are required).
fn kustomize_at(dir: &Path) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            modelpull_testkit::servers::missing(&format!("kubectl (to render {})", dir.display()))?;
            return None;
        }
        Err(e) => panic!("kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(parse_all(&String::from_utf8(out.stdout).unwrap()))
}

/// The base: rendered by kustomize, else the files its kustomization lists.
fn base() -> Vec<Value> {
    kustomize("base").unwrap_or_else(|| {
        let dir = deploy().join("base");
        let k: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap(),
        )
        .unwrap();
        k["resources"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| {
                parse_all(&std::fs::read_to_string(dir.join(f.as_str().unwrap())).unwrap())
            })
            .collect()
    })
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_daemonset_keeps_its_promises() {
    let objects = base();
    let ds = find(&objects, "DaemonSet");
    assert_eq!(ds["metadata"]["name"], "kserve-localmodelnode-agent");
    assert_eq!(ds["metadata"]["namespace"], "kserve");
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        json!({"control-plane": "kserve-localmodelnode-agent", "controller-tools.k8s.io": "1.0"}),
        "KServe's selector, so the DaemonSet replaces KServe's in place"
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["kserve/localmodel"], "worker");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"],
        json!({"type": "Localhost", "localhostProfile": "profiles/modelpull.json"})
    );
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
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/models");
}

/// The kinds each rollback command of deploy/README.md deletes by label, with its namespace
/// (`None` for cluster-scoped objects).
fn rollback_commands() -> Vec<(Option<String>, Vec<String>)> {
    let readme = std::fs::read_to_string(deploy().join("README.md")).unwrap();
    let section = readme
        .split("## Roll back")
        .nth(1)
        .expect("deploy/README.md has a rollback section");
    section
        .lines()
        .filter(|l| {
            l.starts_with("kubectl delete") && l.contains("-l app.kubernetes.io/part-of=modelpull")
        })
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let namespace = words
                .iter()
                .position(|w| *w == "-n")
                .map(|i| words[i + 1].to_owned());
            let kinds = words
                .iter()
                .skip(2)
                .find(|w| !w.starts_with('-') && Some(w.to_string()) != namespace)
                .unwrap()
                .split(',')
                .map(str::to_owned)
                .collect();
            (namespace, kinds)
        })
        .collect()
}

#[test]
fn every_object_is_labelled_for_a_rollback_and_no_namespace_is_owned() {
    let commands = rollback_commands();
    for dir in ["base", "overlays/peers"] {
        let Some(objects) = kustomize(dir) else {
            return;
        };
        for o in &objects {
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/part-of"], "modelpull",
                "{dir}: {o}"
            );
            assert_ne!(
                o["kind"], "Namespace",
                "deleting the base must not delete a namespace (the job namespace holds credentials)"
            );
            // KServe's own DaemonSet is applied again over ours; everything else is deleted.
            if o["kind"] == "DaemonSet" {
                continue;
            }
            let kind = o["kind"].as_str().unwrap().to_lowercase();
            let namespace = o["metadata"]["namespace"].as_str().map(str::to_owned);
            assert!(
                commands
                    .iter()
                    .any(|(ns, kinds)| *ns == namespace && kinds.contains(&kind)),
                "{dir}: no rollback command of deploy/README.md deletes {kind} in {namespace:?}: {commands:?}"
            );
        }
    }
    let Some(ns) = kustomize("namespace") else {
        return;
    };
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0]["metadata"]["name"], "kserve-localmodel-jobs");
}

#[test]
fn the_runtime_default_overlay_changes_only_the_seccomp_profile() {
    let (Some(base), Some(overlay)) = (kustomize("base"), kustomize("overlays/runtime-default"))
    else {
        return;
    };
    assert_eq!(base.len(), overlay.len());
    let mut ds = find(&overlay, "DaemonSet").clone();
    assert_eq!(
        ds["spec"]["template"]["spec"]["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    ds["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] = find(&base, "DaemonSet")
        ["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]
        .clone();
    assert_eq!(&ds, find(&base, "DaemonSet"));
}

#[test]
fn the_pod_monitor_scrapes_the_agents_metrics_port() {
    let Some(objects) = kustomize("monitoring") else {
        return;
    };
    let pm = find(&objects, "PodMonitor");
    let ds = find(&base(), "DaemonSet").clone();
    let template_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &template_labels[k], v,
            "the PodMonitor selects the agent's pods"
        );
    }
    let port = &pm["spec"]["podMetricsEndpoints"][0]["port"];
    assert!(
        ds["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == port && p["containerPort"] == 8080)
    );
}

#[test]
fn the_seccomp_profile_allows_io_uring_and_refuses_the_rest() {
    let profile: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("seccomp/modelpull.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    // What a container without capabilities on x86-64 may call: unconditional rules, and
    // rules that only need a recent kernel or name amd64; rules that need a capability (the
    // DaemonSet drops them all) or constrain arguments are not counted.
    let applies = |s: &Value| {
        let inc = &s["includes"];
        inc.get("caps").is_none()
            && inc["arches"]
                .as_array()
                .is_none_or(|a| a.iter().any(|x| x == "amd64"))
    };
    let allowed: Vec<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "SCMP_ACT_ALLOW" && s.get("args").is_none() && applies(s))
        .flat_map(|s| s["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    for needed in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        // epoll fallback, O_DIRECT writes and publishing.
        "epoll_pwait",
        "pwrite64",
        "fallocate",
        "fdatasync",
        "renameat2",
    ] {
        assert!(allowed.contains(&needed), "{needed} is not allowed");
    }
    for refused in [
        "mount",
        "bpf",
        "unshare",
        "setns",
        "kexec_load",
        "add_key",
        "init_module",
    ] {
        assert!(!allowed.contains(&refused), "{refused} is allowed");
    }
}

fn chart() -> (PathBuf, helm::Chart) {
    let dir = deploy().join("helm/localmodelnode-agent");
    let chart = helm::Chart::load(&dir);
    (dir, chart)
}

fn by_name<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_helm_chart_renders_what_the_kustomize_base_holds() {
    let (_, chart) = chart();
    let rendered = chart.render("agent", "kserve", &json!({}));
    let base = base();
    let kinds = |objects: &[Value]| {
        let mut k: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect();
        k.sort();
        k
    };
    assert_eq!(kinds(&rendered), kinds(&base));
    for o in &base {
        let (kind, name) = (
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap(),
        );
        let r = by_name(&rendered, kind, name);
        assert_eq!(
            r["metadata"]["namespace"], o["metadata"]["namespace"],
            "{kind} {name}"
        );
        for field in ["rules", "roleRef", "subjects"] {
            assert_eq!(r[field], o[field], "{kind} {name}: {field}");
        }
    }
    // The DaemonSet's pod is the base's, with the image and the download flags from values.
    let mut ds = by_name(&rendered, "DaemonSet", "kserve-localmodelnode-agent").clone();
    let c = &mut ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "localmodelnode-agent:latest");
    assert_eq!(
        c["args"],
        json!([
            "--zap-log-level=info",
            "--max-concurrent-downloads=2",
            "--max-connections=256",
            "--gc-grace=10m"
        ])
    );
    c.as_object_mut().unwrap().remove("args");
    let base_ds = find(&base, "DaemonSet");
    assert_eq!(ds["spec"], base_ds["spec"]);
}

#[test]
fn the_helm_values_land_where_they_say() {
    let (_, chart) = chart();
    let rendered = chart.render(
        "agent",
        "kserve",
        &json!({
            "image": {"repository": "registry.example/localmodelnode-agent", "tag": "0.1.0"},
            "hostPath": "/nvme/models",
            "jobNamespace": "model-jobs",
            "createJobNamespace": true,
            "seccompLocalhostProfile": "",
            "downloads": {"limitRate": "500M", "memoryLimit": "256M"},
            "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            "nodeSelector": {"gpu": "h100", "kserve/localmodel": null},
            "tolerations": [],
            "podMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
        }),
    );
    let ns = by_name(&rendered, "Namespace", "model-jobs");
    assert_eq!(
        ns["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let creds = by_name(&rendered, "Role", "localmodelnode-agent-credentials");
    assert_eq!(creds["metadata"]["namespace"], "model-jobs");
    let ds = by_name(&rendered, "DaemonSet", "kserve-localmodelnode-agent");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/localmodelnode-agent:0.1.0");
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--limit-rate=500M"))
    );
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--memory-limit=256M"))
    );
    assert_eq!(
        c["env"][2],
        json!({"name": "HTTPS_PROXY", "value": "http://proxy:3128"})
    );
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/nvme/models");
    assert_eq!(
        pod["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    assert_eq!(pod["nodeSelector"], json!({"gpu": "h100"}));
    assert!(pod.get("tolerations").is_none());
    let pm = by_name(&rendered, "PodMonitor", "localmodelnode-agent");
    assert_eq!(pm["metadata"]["labels"]["release"], "prometheus");
    if let Some(monitoring) = kustomize("monitoring") {
        assert_eq!(pm["spec"], find(&monitoring, "PodMonitor")["spec"]);
    }
}

#[test]
fn every_helm_value_is_declared_and_used() {
    let (dir, chart) = chart();
    let used = helm::value_paths(&dir);
    for path in &used {
        let mut v = &chart.values;
        for key in path.split('.') {
            v = v
                .get(key)
                .unwrap_or_else(|| panic!(".Values.{path} is not in values.yaml"));
        }
    }
    fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &p, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut declared = Vec::new();
    leaves(&chart.values, "", &mut declared);
    for leaf in declared {
        assert!(
            used.iter()
                .any(|u| leaf == *u || leaf.starts_with(&format!("{u}."))),
            "values.yaml declares {leaf}, which no template reads"
        );
    }
}
