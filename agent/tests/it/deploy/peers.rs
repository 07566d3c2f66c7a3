//! The overlay that turns on pulling once per node group (deploy/overlays/peers, the base with
//! components/peers): every agent serves on a port its headless Service selects, the agent is
//! told that Service and that address, and the Role it needs for Leases and EndpointSlices is
//! bound to its ServiceAccount in its namespace, nowhere else. The rules themselves are checked
//! against the requests of running agents in `group`.

use serde_json::Value;

use super::{by_name, find, kustomize};

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[test]
fn the_peers_overlay_wires_the_service_the_port_and_the_role_together() {
    let Some(objects) = kustomize("overlays/peers") else {
        return;
    };
    let ds = find(&objects, "DaemonSet");
    let pod = &ds["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let service = by_name(&objects, "Service", "localmodelnode-agent-peers");
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
    let role = by_name(&objects, "Role", "localmodelnode-agent-peers");
    assert_eq!(role["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let binding = by_name(&objects, "RoleBinding", "localmodelnode-agent-peers");
    assert_eq!(binding["roleRef"]["name"], "localmodelnode-agent-peers");
    assert_eq!(
        binding["subjects"][0]["name"],
        pod["spec"]["serviceAccountName"]
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
    let policy = by_name(&objects, "NetworkPolicy", "localmodelnode-agent-peers");
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

#[test]
fn the_base_alone_shares_nothing() {
    let Some(objects) = kustomize("base") else {
        return;
    };
    let ds = find(&objects, "DaemonSet");
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(container, "PEER_BIND_ADDRESS"), None);
    assert!(
        objects
            .iter()
            .all(|o| o["metadata"]["name"] != "localmodelnode-agent-peers")
    );
}
