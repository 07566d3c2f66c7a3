//! LocalModelNode specs as the API server could hold them (written by anyone with access):
//! every entry the agent accepts maps to a status key without `..` and to a folder named by
//! a storage key, directly under the models folder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use localmodelnode_agent::crd::LocalModelNodeSpec;
use localmodelnode_agent::keys;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<LocalModelNodeSpec>(data) else {
        return;
    };
    for m in &spec.local_models {
        if keys::check_entry(m).is_err() {
            continue;
        }
        let status = keys::status_key(m);
        assert!(
            !status
                .split('/')
                .any(|s| s == ".." || s == "." || s.is_empty()),
            "{status:?}"
        );
        assert!(status.matches('/').count() <= 1, "{status:?}");
        let key = keys::storage_key(&m.source_model_uri);
        assert!(keys::is_storage_key(&key), "{key:?}");
    }
});
