//! Plain `http(s)://` sources: one file per URL.
//!
//! As in KServe's storage-initializer, extra request headers for a host come from the
//! environment variable `<hostname>-headers`, a JSON object (`{"Authorization": "Bearer …"}`);
//! they are sent to that host only. A `#sha256=…` fragment gives the digest to verify.

use super::Manifest;
use super::env::Env;
use crate::error::{Error, Result};
use crate::target::{Auth, StaticHeaders, Target};

pub fn list(uri: &str, env: &Env) -> Result<Manifest> {
    let mut target = Target::parse(uri)?;
    let host = target.url.host_str().unwrap_or_default().to_owned();
    if let Some(headers) = host_headers(env, &host)? {
        target.auth = Auth::new(StaticHeaders(headers));
    }
    target.checksum = Some(target.checksum_label());
    Ok(Manifest {
        uri: crate::redact(&target.url),
        store: "http",
        revision: None,
        files: vec![target],
        skipped: 0,
        ca_bundle: None,
        insecure_hosts: Vec::new(),
    })
}

/// KServe's `<hostname>-headers` variable for `host`, parsed.
fn host_headers(env: &Env, host: &str) -> Result<Option<Vec<(String, String)>>> {
    let name = format!("{host}-headers");
    let Some(json) = env.get(&name) else {
        return Ok(None);
    };
    let invalid =
        |reason: &str| Error::InvalidOption(format!("environment variable {name}: {reason}"));
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|_| invalid("must be a JSON object of header names to string values"))?;
    let mut headers = Vec::new();
    for (k, v) in map {
        let serde_json::Value::String(v) = v else {
            return Err(invalid(&format!(
                "the value of header `{k}` is not a string"
            )));
        };
        if k.is_empty() || k.contains([':', '\r', '\n', ' ']) || v.contains(['\r', '\n']) {
            return Err(invalid(&format!(
                "header `{}` is not a valid header",
                k.escape_debug()
            )));
        }
        headers.push((k, v));
    }
    Ok(Some(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_from_env() {
        let env: Env = [(
            "models.example-headers",
            r#"{"Authorization": "Bearer s3cret", "X-Tenant": "a"}"#,
        )]
        .into_iter()
        .collect();
        let m = list(
            "https://models.example/m/w.bin#sha256=".to_owned().as_str(),
            &env,
        );
        assert!(m.is_err(), "an empty digest is refused");
        let m = list("https://models.example/m/w.bin", &env).unwrap();
        let t = &m.files[0];
        let url = t.url.clone();
        let h = t.auth.headers("GET", &url).unwrap();
        assert!(h.contains(&("Authorization".into(), "Bearer s3cret".into())));
        assert_eq!(t.checksum.as_deref(), Some("size only"));
        assert!(!format!("{m:?}").contains("s3cret"));
        let other = list("https://other.example/w.bin", &env).unwrap();
        assert!(other.files[0].auth.headers("GET", &url).unwrap().is_empty());
        for bad in [r#"["x"]"#, r#"{"a": 1}"#, r#"{"a\nb": "c"}"#, "nope"] {
            let env: Env = [("h.example-headers", bad)].into_iter().collect();
            assert!(list("http://h.example/f", &env).is_err(), "{bad}");
        }
    }
}
