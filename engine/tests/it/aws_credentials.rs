//! `s3://` with credentials from the AWS default chain instead of keys: web identity traded
//! at moto's STS, container credentials (EKS Pod Identity / ECS) and IMDSv2 from responders
//! on 127.0.0.1 that check what the SDKs send, and the shared profile files. moto checks
//! every signature, so a pull that works used the credentials the chain found.

use modelpull::store::Env;
use modelpull::{Error, ExitCode};
use modelpull_testkit::servers;
use modelpull_testkit::stores::{self, S3, none};
use modelpull_testkit::*;

fn bucket() -> Option<S3> {
    S3::start(
        true,
        &[
            ("m/a.bin", data(11, 300_000), none()),
            ("m/b.txt", b"b".to_vec(), none()),
        ],
    )
}

fn pulled(s3: &S3, env: &Env, name: &str) -> modelpull::Result<modelpull::Report> {
    let dest = s3.dest(name);
    let report = pull_uri("s3://models/m", env, &dest, &store_options())?;
    assert_file(&dest, "a.bin", &data(11, 300_000));
    assert_file(&dest, "b.txt", b"b");
    Ok(report)
}

fn token_file(dir: &std::path::Path, token: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn web_identity_is_traded_at_sts_for_the_role() {
    let Some(s3) = bucket() else {
        return;
    };
    let mut env = s3.endpoint_env();
    env.set("AWS_ROLE_ARN", s3.role_arn.clone().unwrap());
    env.set(
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        token_file(s3.dir.path(), "eyJhbGciOiJSUzI1NiJ9.projected.token"),
    );
    env.set("AWS_ROLE_SESSION_NAME", "modelpull-test");
    // AssumeRoleWithWebIdentity is unsigned; everything after it must be signed.
    s3.allow_unsigned(1);
    pulled(&s3, &env, "web-identity").unwrap();
}

#[test]
fn a_missing_token_file_is_refused_at_once_naming_the_variable_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-token");
    // Nothing listens there: the refusal comes before any request.
    let env: Env = [
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", servers::free_port()),
        ),
        (
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/puller".into(),
        ),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            missing.to_str().unwrap().into(),
        ),
    ]
    .into_iter()
    .collect();
    let started = std::time::Instant::now();
    let err = pull_uri(
        "s3://models/m",
        &env,
        &dir.path().join("out"),
        &store_options(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Auth);
    let text = err.to_string();
    assert!(text.contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{text}");
    assert!(text.contains(missing.to_str().unwrap()), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn no_source_is_refused_as_boto3_refuses_it_never_sent_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: a request sent would fail as a store error, not a refusal.
    let endpoint = format!("http://127.0.0.1:{}", servers::free_port());
    let refused = |env: &Env, name: &str| {
        let err = pull_uri(
            "s3://models/m",
            env,
            &dir.path().join(name),
            &store_options(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Auth { .. }), "{err}");
        assert_eq!(err.exit_code(), ExitCode::Auth);
        err.to_string()
    };
    let mut env: Env = [("AWS_ENDPOINT_URL", endpoint.clone())]
        .into_iter()
        .collect();
    env.set("HOME", dir.path().to_str().unwrap());
    let text = refused(&env, "nothing");
    for named in [
        "no AWS credentials found",
        "AWS_ACCESS_KEY_ID",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        &format!(
            "profile `default` in {}",
            dir.path().join(".aws/credentials").display()
        ),
        "not asked for an endpoint outside AWS",
        "awsAnonymousCredential=true",
    ] {
        assert!(text.contains(named), "{named}: {text}");
    }

    // An instance metadata service that answers but gives no role: refused too, once asked.
    let (port, seen) = stores::instance_metadata("", ("AKID".into(), "secret".into()));
    env.set(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    let text = refused(&env, "no-role");
    assert!(text.contains("no AWS credentials found"), "{text}");
    assert!(
        text.contains(&format!("instance metadata at http://127.0.0.1:{port}")),
        "{text}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2, "the token, then the roles");

    // Asked for, anonymous access needs no source: the request goes out (and finds nothing
    // listening).
    env.set("awsAnonymousCredential", "true");
    let err = pull_uri(
        "s3://models/m",
        &env,
        &dir.path().join("anonymous"),
        &store_options(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "nothing asked when anonymous"
    );
}

#[test]
fn container_credentials_with_the_pod_identity_token() {
    let Some(s3) = bucket() else {
        return;
    };
    let (port, seen) = stores::container_credentials("pod-identity-token", s3.key.clone());
    let mut env = s3.endpoint_env();
    env.set(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://127.0.0.1:{port}/v1/credentials"),
    );
    env.set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token_file(s3.dir.path(), "pod-identity-token"),
    );
    pulled(&s3, &env, "pod-identity").unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "one fetch serves the listing, the HEADs and the data: {seen:?}"
    );
    assert!(seen[0].starts_with("GET /v1/credentials "), "{seen:?}");

    let mut wrong = s3.endpoint_env();
    wrong.set(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://127.0.0.1:{port}/v1/credentials"),
    );
    wrong.set("AWS_CONTAINER_AUTHORIZATION_TOKEN", "not-the-token");
    let err = pull_uri("s3://models/m", &wrong, &s3.dest("wrong"), &store_options()).unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Auth, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("container credentials") && text.contains("HTTP 401"),
        "{text}"
    );
    assert!(!text.contains("not-the-token"), "{text}");
}

#[test]
fn the_instance_role_over_imdsv2() {
    let Some(s3) = bucket() else {
        return;
    };
    let (port, seen) = stores::instance_metadata("node-role", s3.key.clone());
    let mut env = s3.endpoint_env();
    env.set(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    pulled(&s3, &env, "imds").unwrap();
    let lines: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l.clone(), |(start, _)| start.to_owned())
        })
        .collect();
    assert_eq!(
        lines,
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/iam/security-credentials/",
            "GET /latest/meta-data/iam/security-credentials/node-role",
        ]
    );

    // Turned off, it is not asked even when named.
    env.set("AWS_EC2_METADATA_DISABLED", "true");
    assert!(
        pull_uri(
            "s3://models/m",
            &env,
            &s3.dest("disabled"),
            &store_options()
        )
        .is_err()
    );
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn a_profile_of_the_shared_credentials_file() {
    let Some(s3) = bucket() else {
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let credentials = files.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = wrong\n\n[puller]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.key.0, s3.key.1
        ),
    )
    .unwrap();
    let mut env = s3.endpoint_env();
    env.set("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap());
    env.set(
        "AWS_CONFIG_FILE",
        files.path().join("absent").to_str().unwrap(),
    );
    env.set("AWS_PROFILE", "puller");
    pulled(&s3, &env, "profile").unwrap();

    env.set("AWS_PROFILE", "default");
    let err = pull_uri("s3://models/m", &env, &s3.dest("default"), &store_options()).unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Auth, "{err}");
    assert!(err.to_string().contains("profile `default`"), "{err}");
}
