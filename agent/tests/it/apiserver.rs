//! The test API server (support/apiserver.py) is faithful where the agent relies on it: the
//! official Kubernetes Python client lists with a field selector, watches and gets a
//! MODIFIED event after a status merge patch on the subresource (spec untouched, generation
//! unchanged), and gets a NotFound Status for a missing object.

use std::process::Command;

const SCRIPT: &str = r#"
import sys, threading
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
api = client.CustomObjectsApi()
G, V, P = "serving.kserve.io", "v1alpha1", "localmodelnodes"
for name in ("node-a", "node-b"):
    api.create_cluster_custom_object(G, V, P, {
        "apiVersion": f"{G}/{V}", "kind": "LocalModelNode", "metadata": {"name": name},
        "spec": {"localModels": [{"modelName": "m", "sourceModelUri": "hf://o/m"}]}})
listed = api.list_cluster_custom_object(G, V, P, field_selector="metadata.name=node-a")
assert [o["metadata"]["name"] for o in listed["items"]] == ["node-a"], listed
rv = listed["metadata"]["resourceVersion"]
gen = api.get_cluster_custom_object(G, V, P, "node-a")["metadata"]["generation"]

events = []
def watcher():
    w = watch.Watch()
    for ev in w.stream(api.list_cluster_custom_object, G, V, P,
                       field_selector="metadata.name=node-a", resource_version=rv,
                       timeout_seconds=5):
        events.append((ev["type"], ev["object"]["metadata"]["name"],
                       (ev["object"].get("status") or {}).get("modelStatus")))
        if ev["type"] == "MODIFIED":
            w.stop()
t = threading.Thread(target=watcher)
t.start()
import time; time.sleep(0.5)
api.patch_cluster_custom_object_status(G, V, P, "node-a",
    {"status": {"modelStatus": {"m": "ModelDownloaded"}}})
api.patch_cluster_custom_object_status(G, V, P, "node-b",
    {"status": {"modelStatus": {"m": "ModelDownloadError"}}})
t.join()
assert events and events[-1] == ("MODIFIED", "node-a", {"m": "ModelDownloaded"}), events
after = api.get_cluster_custom_object(G, V, P, "node-a")
assert after["spec"]["localModels"][0]["modelName"] == "m"
assert after["metadata"]["generation"] == gen, "a status patch leaves the generation"
try:
    client.CoreV1Api().read_namespaced_config_map("inferenceservice-config", "kserve")
    raise SystemExit("a missing ConfigMap was found")
except ApiException as e:
    assert e.status == 404, e
print("faithful")
"#;

#[test]
fn the_official_client_works_against_it() {
    let Some(python) = crate::util::python() else {
        return;
    };
    let api = crate::util::ApiServer::start(&python);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let out = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("faithful"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
