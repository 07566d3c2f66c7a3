//! The exact requests the agent makes, checked with a mock transport (tower-test): the status
//! write is a JSON merge patch of the changed keys on the status subresource, and nothing is
//! sent when nothing changed.

use std::collections::BTreeMap;

use http::{Request, Response};
use kube::client::Body;
use localmodelnode_agent::controller::write_status;
use localmodelnode_agent::crd::ModelStatus;

#[tokio::test]
async fn status_is_merge_patched_on_the_subresource() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let old: BTreeMap<String, ModelStatus> = [
        ("llama".to_owned(), ModelStatus::Pending),
        ("gone".to_owned(), ModelStatus::Downloaded),
    ]
    .into();
    let new: BTreeMap<String, ModelStatus> = [
        ("llama".to_owned(), ModelStatus::Downloaded),
        ("team-a/bert".to_owned(), ModelStatus::Pending),
    ]
    .into();
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("one request");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/serving.kserve.io/v1alpha1/localmodelnodes/gpu-node-1/status"
        );
        assert_eq!(
            request.headers()["content-type"],
            "application/merge-patch+json"
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": {"modelStatus": {
                "llama": "ModelDownloaded", "team-a/bert": "ModelDownloadPending", "gone": null
            }}})
        );
        let reply = serde_json::json!({
            "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
            "metadata": {"name": "gpu-node-1"}, "spec": {"localModels": []}
        });
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    });
    assert!(
        write_status(&client, "gpu-node-1", &old, &new)
            .await
            .unwrap()
    );
    server.await.unwrap();

    // Equal maps: no request at all (the mock would wait forever for one).
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    assert!(
        !write_status(&client, "gpu-node-1", &new, &new)
            .await
            .unwrap()
    );
}
