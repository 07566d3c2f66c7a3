//! `gs://` against a real GCS emulator (gcp-storage-emulator): prefixes, exact objects, empty
//! objects, crc32c verification, an object damaged on the server's disk, and the
//! service-account token flow (a JWT signed with the key, checked by a token endpoint).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use modelpull::store::Env;
use modelpull::{Error, ExitCode};
use util::servers::{self, Server};
use util::*;

/// One HTTP/1.0 request to the emulator (it closes every connection); returns the status.
fn request(port: u16, method: &str, path: &str, content_type: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Gcs {
    server: Server,
    dir: tempfile::TempDir,
}

impl Gcs {
    fn start(objects: &[(&str, &[u8])]) -> Option<Self> {
        let venv = servers::venv()?;
        let server = servers::gcs(&venv);
        let status = request(
            server.port,
            "POST",
            "/storage/v1/b?project=test",
            "application/json",
            br#"{"name": "models"}"#,
        );
        assert_eq!(status, 200);
        for (name, content) in objects {
            let status = if content.is_empty() {
                // The emulator's media upload cannot take an empty body; multipart can.
                let body = format!(
                    "--b\r\nContent-Type: application/json\r\n\r\n{{\"name\": \"{name}\"}}\r\n--b\r\nContent-Type: text/plain\r\n\r\n\r\n--b--\r\n"
                );
                request(
                    server.port,
                    "POST",
                    "/upload/storage/v1/b/models/o?uploadType=multipart",
                    "multipart/related; boundary=b",
                    body.as_bytes(),
                )
            } else {
                let path = format!(
                    "/upload/storage/v1/b/models/o?uploadType=media&name={}",
                    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                );
                request(
                    server.port,
                    "POST",
                    &path,
                    "application/octet-stream",
                    content,
                )
            };
            assert_eq!(status, 200, "upload of {name}");
        }
        Some(Self {
            server,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn env(&self) -> Env {
        [(
            "STORAGE_EMULATOR_HOST",
            format!("127.0.0.1:{}", self.server.port),
        )]
        .into_iter()
        .collect()
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    /// The emulator's own copy of the object holding `content`.
    fn stored(&self, content: &[u8]) -> PathBuf {
        walk(self.server.dir.path())
            .into_iter()
            .find(|p| p.is_file() && std::fs::read(p).is_ok_and(|c| c == content))
            .expect("the emulator keeps the object on disk")
    }
}

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

/// A token endpoint that accepts a JWT only when `public_key` verifies its signature.
fn token_endpoint(public_key: Vec<u8>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let port = servers::responder(move |_, form| {
        let jwt = form.split("assertion=").nth(1).unwrap_or_default();
        let parts: Vec<&str> = jwt.split('.').collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let valid = parts.len() == 3
            && form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            && ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                &public_key,
            )
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64.decode(parts[2]).unwrap_or_default(),
            )
            .is_ok();
        let claims = parts
            .get(1)
            .and_then(|c| b64.decode(c).ok())
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        log.lock().unwrap().push(claims);
        if valid {
            (
                "200 OK",
                r#"{"access_token": "ya29.test", "expires_in": 3600, "token_type": "Bearer"}"#
                    .to_owned(),
            )
        } else {
            (
                "400 Bad Request",
                r#"{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}"#
                    .to_owned(),
            )
        }
    });
    (port, seen)
}

fn rsa_key(dir: &Path, name: &str) -> Option<(String, Vec<u8>)> {
    let path = dir.join(name);
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        servers::missing("openssl")?;
        return None;
    }
    let pem = std::fs::read_to_string(&path).unwrap();
    use base64::Engine as _;
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    Some((pem, pair.public().as_ref().to_vec()))
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
    let creds = serde_json::json!({
        "type": "service_account",
        "client_email": "puller@project.iam.gserviceaccount.com",
        "private_key": pem,
        "token_uri": format!("http://127.0.0.1:{port}/token"),
    });
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

    // The CLI at trace level: neither the key nor the token in its log, report or marker.
    let dest = gcs.dest("cli");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelpull"))
        .args(["pull", "--json", "gs://models/m"])
        .arg(&dest)
        .env_clear()
        .envs(env.iter())
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let marker = std::fs::read_to_string(dest.join(".modelpull.json")).unwrap_or_default();
    let text = format!(
        "{}{}{marker}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let key_line = pem.lines().nth(1).unwrap();
    assert!(!text.contains(key_line), "the private key leaked");
    assert!(!text.contains("ya29.test"), "the access token leaked");

    // A key the token endpoint does not know: an access error, no key in the message.
    let (other_pem, _) = rsa_key(gcs.dir.path(), "other.pem").unwrap();
    let creds = serde_json::json!({
        "type": "service_account",
        "client_email": "puller@project.iam.gserviceaccount.com",
        "private_key": other_pem,
        "token_uri": format!("http://127.0.0.1:{port}/token"),
    });
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
    let control = modelpull::store::Control::new(&store_options()).unwrap();
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
