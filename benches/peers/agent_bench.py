"""Times the agent end to end: creates the inferenceservice-config ConfigMap (once) and a
LocalModelNode naming one model on the test API server, then waits for ModelDownloaded.
Prints the seconds from the create to the status; deletes the LocalModelNode afterwards.

usage: agent_bench.py API_URL NODE URI
"""
import json
import sys
import time
import urllib.error
import urllib.request


def call(method, url, body=None, content_type="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def main() -> None:
    api, node, uri = sys.argv[1:4]
    call("POST", f"{api}/api/v1/namespaces/kserve/configmaps", {
        "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
        "data": {"localModel": json.dumps({"jobNamespace": "kserve-localmodel-jobs",
                                           "reconcilationFrequencyInSecs": 60})}})
    lmns = f"{api}/apis/serving.kserve.io/v1alpha1/localmodelnodes"
    started = time.monotonic()
    status, _ = call("POST", lmns, {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
        "metadata": {"name": node},
        "spec": {"localModels": [{"modelName": "bench", "sourceModelUri": uri}]}})
    assert status == 201, status
    while True:
        _, obj = call("GET", f"{lmns}/{node}")
        state = ((obj or {}).get("status") or {}).get("modelStatus", {}).get("bench")
        if state == "ModelDownloaded":
            break
        if time.monotonic() - started > 600:
            sys.exit("timed out")
        time.sleep(0.02)
    print(f"{time.monotonic() - started:.3f}")
    call("DELETE", f"{lmns}/{node}")


if __name__ == "__main__":
    main()
