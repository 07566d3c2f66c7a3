//! Model stores on 127.0.0.1 for the tests, seeded and ready: an S3 bucket in moto (signed
//! with a real key), a GCS bucket in gcp-storage-emulator, and what GCS service-account tests
//! need (an RSA key made with openssl, a token endpoint that checks the JWT's signature).
//! The engine's store tests and the CLI's tests both use them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use modelpull::store::Env;
use serde_json::json;

use crate::servers::{self, Server, Venv};
use crate::walk;

/// An S3 bucket `models` in moto.
#[derive(Debug)]
pub struct S3 {
    pub server: Server,
    pub key: (String, String),
    /// With signature checking on: a role with full S3 access (for STS to hand out).
    pub role_arn: Option<String>,
    pub dir: tempfile::TempDir,
}

impl S3 {
    /// A moto server with bucket `models` holding `objects` (key, content, extra plan fields).
    pub fn start(auth: bool, objects: &[(&str, Vec<u8>, serde_json::Value)]) -> Option<Self> {
        let venv = servers::venv()?;
        Some(Self::start_with(&venv, auth, objects, None))
    }

    pub fn start_with(
        venv: &Venv,
        auth: bool,
        objects: &[(&str, Vec<u8>, serde_json::Value)],
        many: Option<serde_json::Value>,
    ) -> Self {
        let server = servers::moto(venv, auth);
        let dir = tempfile::tempdir().unwrap();
        let mut plan_objects = Vec::new();
        for (i, (key, content, extra)) in objects.iter().enumerate() {
            let file = dir.path().join(format!("object-{i}"));
            std::fs::write(&file, content).unwrap();
            let mut o = json!({ "key": key, "file": file });
            if let serde_json::Value::Object(m) = extra {
                for (k, v) in m {
                    o[k] = v.clone();
                }
            }
            plan_objects.push(o);
        }
        let plan = json!({
            "endpoint": server.url(),
            "auth": auth,
            "bucket": "models",
            "objects": plan_objects,
            "many": many,
        });
        let out = servers::python(venv, "s3_seed.py", &[], &plan.to_string());
        let key: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        Self {
            key: (
                key["access_key_id"].as_str().unwrap().to_owned(),
                key["secret_access_key"].as_str().unwrap().to_owned(),
            ),
            role_arn: key["role_arn"].as_str().map(str::to_owned),
            server,
            dir,
        }
    }

    /// Lets the next `n` requests through unsigned, then checks signatures again: an STS
    /// `AssumeRoleWithWebIdentity` is unsigned, and moto checks every request or none.
    pub fn allow_unsigned(&self, n: u32) {
        let status = request(
            self.server.port,
            "POST",
            "/moto-api/reset-auth",
            "text/plain",
            n.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "moto's reset-auth");
    }

    /// Where moto answers, without keys: for tests whose credentials come from elsewhere.
    pub fn endpoint_env(&self) -> Env {
        [
            ("AWS_ENDPOINT_URL", self.server.url()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .collect()
    }

    pub fn env(&self) -> Env {
        [
            ("AWS_ENDPOINT_URL", self.server.url()),
            ("AWS_ACCESS_KEY_ID", self.key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.key.1.clone()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .collect()
    }

    pub fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }
}

/// Seeds bucket `models` of the moto `server` (started with auth) with one object, `key`
/// holding `content` (`extra`: more of the object's plan fields, as `checksum`), and returns
/// the environment of a temporary STS session that may read it: keys and a session token.
pub fn session_bucket(
    venv: &Venv,
    server: &Server,
    key: &str,
    content: &[u8],
    extra: serde_json::Value,
) -> Env {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("obj"), content).expect("the object's file");
    let mut object = json!({"key": key, "file": dir.path().join("obj")});
    if let (Some(o), Some(e)) = (object.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let plan = json!({
        "endpoint": server.url(), "auth": true, "sts": true, "bucket": "models",
        "objects": [object],
    });
    let seeded = servers::python(venv, "s3_seed.py", &[], &plan.to_string());
    let out: serde_json::Value = serde_json::from_str(seeded.trim()).expect("the seed's JSON");
    let field = |k: &str| {
        out["session"][k]
            .as_str()
            .expect("the session's keys")
            .to_owned()
    };
    [
        ("AWS_ENDPOINT_URL", server.url()),
        ("AWS_ACCESS_KEY_ID", field("access_key_id")),
        ("AWS_SECRET_ACCESS_KEY", field("secret_access_key")),
        ("AWS_SESSION_TOKEN", field("session_token")),
    ]
    .into_iter()
    .collect()
}

/// No extra fields for an object of [`S3::start`]'s plan.
pub fn none() -> serde_json::Value {
    json!({})
}

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

/// A GCS bucket `models` in gcp-storage-emulator.
#[derive(Debug)]
pub struct Gcs {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl Gcs {
    pub fn start(objects: &[(&str, &[u8])]) -> Option<Self> {
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

    pub fn env(&self) -> Env {
        [(
            "STORAGE_EMULATOR_HOST",
            format!("127.0.0.1:{}", self.server.port),
        )]
        .into_iter()
        .collect()
    }

    pub fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    /// The emulator's own copy of the object holding `content`.
    pub fn stored(&self, content: &[u8]) -> PathBuf {
        walk(self.server.dir.path())
            .into_iter()
            .find(|p| p.is_file() && std::fs::read(p).is_ok_and(|c| c == content))
            .expect("the emulator keeps the object on disk")
    }
}

/// The credentials JSON AWS's container agents and instance metadata answer with, for a
/// long-term `key` (moto's user key) made to look temporary.
fn aws_credentials_json(key: &(String, String)) -> String {
    json!({
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": key.0,
        "SecretAccessKey": key.1,
        "Token": "",
        "Expiration": "2099-01-01T00:00:00Z",
    })
    .to_string()
}

/// A container credentials endpoint (ECS agent, EKS Pod Identity agent) handing out `key`
/// at any path to requests whose `Authorization` header is exactly `token`. Returns its
/// port and the request heads it saw.
pub fn container_credentials(token: &str, key: (String, String)) -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let expected = format!("authorization: {}\r\n", token.to_ascii_lowercase());
    let port = servers::responder(move |head, _| {
        log.lock().unwrap().push(head.to_owned());
        let lower = head.to_ascii_lowercase();
        if !lower.starts_with("get ") {
            return ("405 Method Not Allowed", "{}".into());
        }
        if !lower.contains(&expected) {
            return (
                "401 Unauthorized",
                r#"{"Message": "invalid authorization token"}"#.into(),
            );
        }
        ("200 OK", aws_credentials_json(&key))
    });
    (port, seen)
}

/// An EC2 instance metadata service speaking IMDSv2 only: `PUT /latest/api/token` with a TTL
/// header gives a session token, and the role name and its credentials (`key`) are given
/// only to requests carrying it. Returns its port and the request lines it saw.
pub fn instance_metadata(role: &str, key: (String, String)) -> (u16, Arc<Mutex<Vec<String>>>) {
    const SESSION: &str = "imds-session-token";
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let role = role.to_owned();
    let port = servers::responder(move |head, _| {
        let line = head.lines().next().unwrap_or_default().to_owned();
        log.lock().unwrap().push(line.clone());
        let lower = head.to_ascii_lowercase();
        let header = |name: &str| {
            lower
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(str::trim)
                .map(str::to_owned)
        };
        if line.starts_with("PUT /latest/api/token ") {
            return match header("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|t| t.parse::<u32>().ok())
            {
                Some(1..=21600) => ("200 OK", SESSION.into()),
                _ => ("400 Bad Request", "missing or invalid TTL".into()),
            };
        }
        if header("x-aws-ec2-metadata-token").as_deref() != Some(SESSION) {
            return ("401 Unauthorized", String::new());
        }
        let path = line.split_whitespace().nth(1).unwrap_or_default();
        match path.strip_prefix("/latest/meta-data/iam/security-credentials/") {
            Some("") => ("200 OK", role.clone()),
            Some(r) if r == role => ("200 OK", aws_credentials_json(&key)),
            _ => ("404 Not Found", String::new()),
        }
    });
    (port, seen)
}

/// A token endpoint that accepts a JWT only when `public_key` verifies its signature.
pub fn token_endpoint(public_key: Vec<u8>) -> (u16, Arc<Mutex<Vec<String>>>) {
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

/// A 2048-bit RSA key made with openssl, written to `dir/name`: its PEM and public key.
pub fn rsa_key(dir: &Path, name: &str) -> Option<(String, Vec<u8>)> {
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

/// A service-account key file's JSON for `pem`, whose tokens come from the endpoint of
/// [`token_endpoint`] on `token_port`.
pub fn service_account(pem: &str, token_port: u16) -> serde_json::Value {
    json!({
        "type": "service_account",
        "client_email": "puller@project.iam.gserviceaccount.com",
        "private_key": pem,
        "token_uri": format!("http://127.0.0.1:{token_port}/token"),
    })
}
