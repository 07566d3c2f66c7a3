//! `gs://` against a real GCS emulator (gcp-storage-emulator): prefixes, exact objects, empty
//! objects, crc32c verification, an object damaged on the server's disk, and the
//! service-account token flow (a JWT signed with the key, checked by a token endpoint).

use std::sync::{Arc, Mutex};

use modelpull::store::Env;
use modelpull::{Error, ExitCode};
use modelpull_testkit::servers;
use modelpull_testkit::stores::{Gcs, rsa_key, service_account, token_endpoint};
use modelpull_testkit::*;

#[test]
fn prefix_exact_object_and_empty_files() {
    let big = data(1, 3 * 1024 * 1024 + 17);
    let objects: Vec<(&str, &[u8])> = vec![
        ("llama/model.safetensors", &big),
        ("llama/tokenizer/vocab file.json", b"{\"v\": 1}"),
        ("llama/empty.txt", b""),
        ("llama-other/x.bin", b"not part of llama/"),
    ];
    let Some(gcs) = Gcs::start(&objects) else {
        return;
    };
    let dest = gcs.dest("llama");
    let report = pull_uri("gs://models/llama", &gcs.env(), &dest, &store_options()).unwrap();
    assert_file(&dest, "model.safetensors", &big);
    assert_file(&dest, "tokenizer/vocab file.json", b"{\"v\": 1}");
    assert_file(&dest, "empty.txt", b"");
    assert!(!dest.join("x.bin").exists());
    assert_eq!(report.files.len(), 3);
    for f in &report.files {
        assert_eq!(f.checksum, "crc32c", "{}", f.path);
        assert!(!f.verified.is_empty(), "{} was verified", f.path);
    }

    let dest = gcs.dest("one");
    pull_uri(
        "gs://models/llama/model.safetensors",
        &gcs.env(),
        &dest,
        &store_options(),
    )
    .unwrap();
    assert_file(&dest, "model.safetensors", &big);

    let err = pull_uri(
        "gs://models/absent",
        &gcs.env(),
        &gcs.dest("none"),
        &store_options(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no model files found"), "{err}");
}

#[test]
fn object_damaged_on_the_server_is_caught() {
    let good = data(2, 500_000);
    let Some(gcs) = Gcs::start(&[("m/w.bin", &good)]) else {
        return;
    };
    let stored = gcs.stored(&good);
    let mut bad = good.clone();
    bad[123_456] ^= 0x40;
    std::fs::write(&stored, &bad).unwrap();
    let dest = gcs.dest("m");
    let err = pull_uri("gs://models/m", &gcs.env(), &dest, &store_options()).unwrap_err();
    assert!(
        matches!(&err, Error::Verify { file, .. } if file == "w.bin"),
        "{err}"
    );
    assert_eq!(err.exit_code(), ExitCode::Verify);
    assert!(!dest.exists());
}

#[test]
fn service_account_key_gets_a_token() {
    let Some(gcs) = Gcs::start(&[("m/a.txt", b"hello")]) else {
        return;
    };
    let Some((pem, public)) = rsa_key(gcs.dir.path(), "sa.pem") else {
        return;
    };
    let (port, seen) = token_endpoint(public);
    let creds = service_account(&pem, port);
    let file = gcs.dir.path().join("sa.json");
    std::fs::write(&file, creds.to_string()).unwrap();
    let mut env = gcs.env();
    env.set("GOOGLE_APPLICATION_CREDENTIALS", file.to_str().unwrap());
    pull_uri("gs://models/m", &env, &gcs.dest("m"), &store_options()).unwrap();
    assert_file(&gcs.dest("m"), "a.txt", b"hello");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one token for the whole pull");
    assert!(seen[0].contains("puller@project.iam.gserviceaccount.com"));
    assert!(seen[0].contains("devstorage.read_only"));

    // A key the token endpoint does not know: an access error, no key in the message.
    let (other_pem, _) = rsa_key(gcs.dir.path(), "other.pem").unwrap();
    let creds = service_account(&other_pem, port);
    let mut env = gcs.env();
    env.set("GOOGLE_APPLICATION_CREDENTIALS_JSON", creds.to_string());
    let err = pull_uri("gs://models/m", &env, &gcs.dest("denied"), &store_options()).unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Auth, "{err}");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

/// gcp-storage-emulator does not paginate, so pagination is checked against a listing
/// endpoint that does, the way the JSON API documents it (`nextPageToken`, `pageToken`).
#[test]
fn listing_follows_page_tokens() {
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let seen = tokens.clone();
    let port = servers::responder(move |head, _| {
        let line = head.lines().next().unwrap_or_default();
        let token = line
            .split("pageToken=")
            .nth(1)
            .map(|t| t.split([' ', '&']).next().unwrap_or_default().to_owned());
        seen.lock().unwrap().push(token.clone());
        let body = match token.as_deref() {
            None => {
                r#"{"items": [{"name": "m/a", "size": "1", "crc32c": "AAAAAA=="}], "nextPageToken": "page-2"}"#
            }
            Some("page-2") => {
                r#"{"items": [{"name": "m/b", "size": "2", "crc32c": "AAAAAA=="}], "nextPageToken": "page-3"}"#
            }
            _ => {
                r#"{"items": [{"name": "m/c", "size": "3", "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww=="}]}"#
            }
        };
        ("200 OK", body.to_owned())
    });
    let env: Env = [("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{port}"))]
        .into_iter()
        .collect();
    let control = modelpull::store::Control::new(&store_options().client()).unwrap();
    let m = modelpull::store::resolve("gs://models/m", &env, &control).unwrap();
    let listed: Vec<_> = m
        .listing()
        .into_iter()
        .map(|l| (l.path, l.checksum))
        .collect();
    assert_eq!(
        listed,
        [
            ("a".to_owned(), "crc32c".to_owned()),
            ("b".to_owned(), "crc32c".to_owned()),
            ("c".to_owned(), "md5".to_owned())
        ]
    );
    assert_eq!(
        *tokens.lock().unwrap(),
        [None, Some("page-2".to_owned()), Some("page-3".to_owned())]
    );
}

/// A metadata server as on Google Cloud: answers a token only to requests that carry
/// `Metadata-Flavor: Google`.
#[test]
fn metadata_server_token() {
    let Some(gcs) = Gcs::start(&[("m/a.txt", b"from the metadata server's identity")]) else {
        return;
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let port = servers::responder(move |head, _| {
        let flavored = head.contains("Metadata-Flavor: Google");
        let path_ok =
            head.starts_with("GET /computeMetadata/v1/instance/service-accounts/default/token ");
        log.lock().unwrap().push(flavored && path_ok);
        if flavored && path_ok {
            (
                "200 OK",
                r#"{"access_token":"ya29.metadata","expires_in":3599,"token_type":"Bearer"}"#
                    .to_owned(),
            )
        } else {
            (
                "403 Forbidden",
                r#"{"error": "missing Metadata-Flavor"}"#.to_owned(),
            )
        }
    });
    let mut env = gcs.env();
    env.set("GCE_METADATA_HOST", format!("127.0.0.1:{port}"));
    pull_uri("gs://models/m", &env, &gcs.dest("m"), &store_options()).unwrap();
    assert_file(
        &gcs.dest("m"),
        "a.txt",
        b"from the metadata server's identity",
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [true],
        "one well-formed token request"
    );
}
