//! Pulling once per node group as deploy/ turns it on, with kustomize (deploy/overlays/peers,
//! the base with components/peers) or with the Helm chart's `peers.enabled`: every agent
//! serves on a port its headless Service selects, the agent is told that Service and that
//! address, the Role it needs for Leases and EndpointSlices is bound to its ServiceAccount in
//! its namespace, nowhere else, and a NetworkPolicy keeps the port to the agents. The chart
//! renders the component's objects and rules; without it (or with `peers.enabled: false`)
//! nothing is shared. The rules themselves are checked against the requests of running agents
//! in `group`.

use std::time::Duration;

use clap::CommandFactory;
use localmodelnode_agent::cli::Args;
use serde_json::{Value, json};

use super::{by_name, chart, deploy, find, kustomize, parse_all};

/// The name of the component's four objects, and of the Service the agent is told.
const PEERS: &str = "localmodelnode-agent-peers";

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// The peers' objects and the DaemonSet fit together: the Service selects the agents' pods on
/// the port they serve, the agent is told both, the Role is bound to the pods' ServiceAccount
/// in their namespace, and only the agents reach the port.
fn assert_wired(objects: &[Value]) {
    let ds = find(objects, "DaemonSet");
    let pod = &ds["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let service = by_name(objects, "Service", PEERS);
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert_eq!(
        service["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    // The Service selects the agents' pods.
    let selector = service["spec"]["selector"].as_object().unwrap();
    for (k, v) in selector {
        assert_eq!(&pod["metadata"]["labels"][k], v, "selector {k}");
    }
    // Its port is the container's peer port, which the agent listens on.
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["name"], "peer");
    let declared = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the Service's target port is declared");
    assert_eq!(declared["containerPort"], port["port"]);
    assert_eq!(
        env(container, "PEER_BIND_ADDRESS"),
        Some(format!(":{}", declared["containerPort"]).as_str())
    );
    assert_eq!(
        env(container, "PEER_SERVICE"),
        service["metadata"]["name"].as_str()
    );
    // The Role is namespaced with the agents and bound to their ServiceAccount.
    let role = by_name(objects, "Role", PEERS);
    assert_eq!(role["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let binding = by_name(objects, "RoleBinding", PEERS);
    assert_eq!(
        binding["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    assert_eq!(binding["roleRef"]["name"], PEERS);
    assert_eq!(
        binding["subjects"][0]["name"],
        pod["spec"]["serviceAccountName"]
    );
    assert_eq!(
        binding["subjects"][0]["namespace"],
        ds["metadata"]["namespace"]
    );
    let resources: Vec<&str> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(resources, ["leases", "endpointslices"]);
    // Only the agents' pods reach the peer port; metrics and probes stay open.
    let policy = by_name(objects, "NetworkPolicy", PEERS);
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        service["spec"]["selector"]
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let peer_rule = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == declared["containerPort"])
        .expect("a rule for the peer port");
    assert_eq!(
        peer_rule["from"][0]["podSelector"]["matchLabels"],
        service["spec"]["selector"]
    );
    assert_eq!(peer_rule["ports"].as_array().unwrap().len(), 1);
    let open: Vec<&Value> = rules
        .iter()
        .filter(|r| r["from"].is_null())
        .flat_map(|r| r["ports"].as_array().unwrap())
        .map(|p| &p["port"])
        .collect();
    assert_eq!(open, [8080, 8081]);
}

/// Nothing of the component: no object of its name, no peer env, no peer port.
fn assert_shares_nothing(objects: &[Value]) {
    let ds = find(objects, "DaemonSet");
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    for e in container["env"].as_array().unwrap() {
        assert!(!e["name"].as_str().unwrap().starts_with("PEER_"), "{e}");
    }
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "peer")
    );
    assert!(objects.iter().all(|o| o["metadata"]["name"] != PEERS));
}

#[test]
fn the_peers_overlay_wires_the_service_the_port_and_the_role_together() {
    let Some(objects) = kustomize("overlays/peers") else {
        return;
    };
    assert_wired(&objects);
}

#[test]
fn the_base_alone_shares_nothing() {
    let Some(objects) = kustomize("base") else {
        return;
    };
    assert_shares_nothing(&objects);
}

/// The agent's command line in `ds`: its args, and each env variable with a value passed as
/// the flag that reads it, parsed as the agent parses them (a variable no flag reads fails).
fn agent_args(ds: &Value) -> Args {
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let cmd = Args::command();
    let mut argv = vec!["localmodelnode-agent".to_owned()];
    for a in container["args"].as_array().unwrap() {
        argv.push(a.as_str().unwrap().to_owned());
    }
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let Some(value) = e["value"].as_str() else {
            assert!(
                e["valueFrom"].is_object(),
                "{name}: a value that is not a string"
            );
            continue;
        };
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|v| v == name))
            .unwrap_or_else(|| panic!("the agent reads no {name}"));
        argv.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    let invocation = Args::try_parse_go_style(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(invocation.ignored.is_empty(), "{argv:?}");
    invocation.args
}

/// The optional peer values, all set, to values other than the agent's defaults.
fn every_peer_value(enabled: bool) -> Value {
    json!({"peers": {
        "enabled": enabled,
        "port": 9082,
        "limitRate": "500M",
        "maxConnections": 32,
        "leaseDuration": "30s",
        "stripeSize": "128M",
    }})
}

#[test]
fn the_helm_chart_with_peers_renders_what_the_peers_overlay_adds() {
    let (_, chart) = chart();
    let plain = chart.render("agent", "kserve", &json!({}));
    let rendered = chart.render("agent", "kserve", &json!({"peers": {"enabled": true}}));
    assert_wired(&rendered);
    // The component's four objects, with the chart's labels; every other object but the
    // DaemonSet as it was.
    let mut added: Vec<&str> = rendered
        .iter()
        .filter(|o| o["metadata"]["name"] == PEERS)
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    added.sort();
    assert_eq!(added, ["NetworkPolicy", "Role", "RoleBinding", "Service"]);
    assert_eq!(rendered.len(), plain.len() + added.len());
    for o in &plain {
        if o["kind"] != "DaemonSet" {
            assert!(rendered.contains(o), "{o}");
        }
    }
    let labels =
        &by_name(&rendered, "ServiceAccount", "localmodelnode-agent")["metadata"]["labels"];
    for o in rendered.iter().filter(|o| o["metadata"]["name"] == PEERS) {
        assert_eq!(&o["metadata"]["labels"], labels, "{}", o["kind"]);
    }
    // The DaemonSet gains the two variables and the port, after the others.
    let ds = find(&rendered, "DaemonSet");
    let before = &find(&plain, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let mut env = before["env"].as_array().unwrap().clone();
    env.push(json!({"name": "PEER_BIND_ADDRESS", "value": ":8082"}));
    env.push(json!({"name": "PEER_SERVICE", "value": PEERS}));
    assert_eq!(c["env"], Value::Array(env));
    let mut ports = before["ports"].as_array().unwrap().clone();
    ports.push(json!({"name": "peer", "containerPort": 8082}));
    assert_eq!(c["ports"], Value::Array(ports));
    // The agent serves there and looks for its peers through the Service; the rest is its
    // defaults.
    let args = agent_args(ds);
    assert_eq!(args.peer_bind_address.unwrap().to_string(), ":8082");
    assert_eq!(args.peer_service.as_deref(), Some(PEERS));
    assert_eq!(args.peer_limit_rate, None);
    assert_eq!(args.peer_max_connections, 64);
    assert_eq!(args.peer_lease_duration, Duration::from_secs(15));
    assert_eq!(args.peer_stripe_size, 16 << 20);

    let Some(overlay) = kustomize("overlays/peers") else {
        return;
    };
    for (kind, fields) in [
        ("Service", &["spec"][..]),
        ("Role", &["rules"]),
        ("RoleBinding", &["roleRef", "subjects"]),
        ("NetworkPolicy", &["spec"]),
    ] {
        let (r, o) = (
            by_name(&rendered, kind, PEERS),
            by_name(&overlay, kind, PEERS),
        );
        assert_eq!(r["apiVersion"], o["apiVersion"], "{kind}");
        assert_eq!(
            r["metadata"]["namespace"], o["metadata"]["namespace"],
            "{kind}"
        );
        for field in fields {
            assert_eq!(r[field], o[field], "{kind}: {field}");
        }
    }
    // The pod is the overlay's, with the download flags from values.
    let mut ds = ds.clone();
    ds["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("args");
    assert_eq!(ds["spec"], find(&overlay, "DaemonSet")["spec"]);
}

#[test]
fn the_helm_peers_role_has_the_components_rules_exactly() {
    let component =
        parse_all(&std::fs::read_to_string(deploy().join("components/peers/rbac.yaml")).unwrap());
    let (_, chart) = chart();
    let rendered = chart.render(
        "agent",
        "models",
        &json!({"peers": {"enabled": true}, "serviceAccount": {"name": "model-agent"}}),
    );
    assert_wired(&rendered);
    let role = by_name(&rendered, "Role", PEERS);
    let theirs = by_name(&component, "Role", PEERS);
    assert_eq!(role["apiVersion"], theirs["apiVersion"]);
    assert_eq!(role["rules"], theirs["rules"]);
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["get", "list", "create", "update", "delete"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
             "verbs": ["list"]},
        ])
    );
    assert_eq!(role["metadata"]["namespace"], "models");
    // Bound to the chart's ServiceAccount, in the release namespace only.
    let binding = by_name(&rendered, "RoleBinding", PEERS);
    assert_eq!(binding["metadata"]["namespace"], "models");
    assert_eq!(
        binding["roleRef"],
        by_name(&component, "RoleBinding", PEERS)["roleRef"]
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "model-agent", "namespace": "models"}])
    );
    // Nothing cluster-wide comes with it.
    let plain = chart.render(
        "agent",
        "models",
        &json!({"serviceAccount": {"name": "model-agent"}}),
    );
    let cluster_wide = |objects: &[Value]| {
        objects
            .iter()
            .filter(|o| o["kind"].as_str().unwrap().starts_with("Cluster"))
            .count()
    };
    assert_eq!(cluster_wide(&rendered), cluster_wide(&plain));
}

#[test]
fn the_helm_peer_values_land_where_they_say() {
    let (_, chart) = chart();
    let rendered = chart.render("agent", "kserve", &every_peer_value(true));
    assert_wired(&rendered);
    let service = by_name(&rendered, "Service", PEERS);
    assert_eq!(service["spec"]["ports"][0]["port"], 9082);
    let ds = find(&rendered, "DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    for (name, value) in [
        ("PEER_BIND_ADDRESS", ":9082"),
        ("PEER_LIMIT_RATE", "500M"),
        ("PEER_MAX_CONNECTIONS", "32"),
        ("PEER_LEASE_DURATION", "30s"),
        ("PEER_STRIPE_SIZE", "128M"),
    ] {
        assert_eq!(env(c, name), Some(value), "{name}");
    }
    let args = agent_args(ds);
    assert_eq!(args.peer_bind_address.unwrap().to_string(), ":9082");
    assert_eq!(args.peer_service.as_deref(), Some(PEERS));
    assert_eq!(args.peer_limit_rate, Some(500 << 20));
    assert_eq!(args.peer_max_connections, 32);
    assert_eq!(args.peer_lease_duration, Duration::from_secs(30));
    assert_eq!(args.peer_stripe_size, 128 << 20);
}

#[test]
fn the_helm_chart_without_peers_shares_nothing() {
    let (_, chart) = chart();
    assert_eq!(chart.values["peers"]["enabled"], false, "off by default");
    let plain = chart.render("agent", "kserve", &json!({}));
    assert_shares_nothing(&plain);
    let args = agent_args(find(&plain, "DaemonSet"));
    assert!(args.peer_bind_address.is_none() && args.peer_service.is_none());
    // The other peer values change nothing while it is off.
    assert_eq!(
        chart.render("agent", "kserve", &every_peer_value(false)),
        plain
    );
}
