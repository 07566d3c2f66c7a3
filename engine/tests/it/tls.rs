//! https origins with a certificate authority made in the test: trusted through `--ca-bundle`
//! the pull works; untrusted, expired and wrong-host certificates are refused clearly.

use modelpull::{ExitCode, Target};
use modelpull_testkit::origin::{Origin, TlsIdentity};
use modelpull_testkit::pki::{leaf, pki};
use modelpull_testkit::*;

fn serve(identity: &TlsIdentity, content: &[u8]) -> (tempfile::TempDir, Origin) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("o")).unwrap();
    std::fs::write(dir.path().join("o/model.bin"), content).unwrap();
    let origin = Origin::serve_tls(dir.path().join("o"), identity).unwrap();
    (dir, origin)
}

fn attempt(
    origin: &Origin,
    dir: &std::path::Path,
    ca: Option<&str>,
    driver: modelpull::runtime::Driver,
) -> modelpull::Result<modelpull::Report> {
    let mut opts = options(driver);
    opts.retries = 2;
    if let Some(pem) = ca {
        let path = dir.join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        opts.ca_bundle = Some(path.into());
    }
    let target = Target::parse(&origin.url_for_host("localhost", "model.bin")).unwrap();
    pull(
        vec![target],
        &dir.join(format!("out-{}", driver.name())),
        &opts,
    )
}

#[test]
fn trusted_ca_bundle_works_on_both_drivers() {
    let pki = pki();
    let content = data(5, 1_500_000);
    let (dir, origin) = serve(&leaf(&pki, &["localhost"], false), &content);
    each_driver(|driver| {
        attempt(&origin, dir.path(), Some(&pki.ca_pem), driver).unwrap();
        assert_file(
            &dir.path().join(format!("out-{}", driver.name())),
            "model.bin",
            &content,
        );
    });
}

fn assert_refused(res: modelpull::Result<modelpull::Report>, needle: &str) {
    let err = res.expect_err("the certificate must be refused");
    assert_eq!(err.exit_code(), ExitCode::Source, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("TLS with localhost failed") && msg.contains(needle),
        "{msg}"
    );
}

#[test]
fn untrusted_certificate_is_refused() {
    let pki = pki();
    let (dir, origin) = serve(&leaf(&pki, &["localhost"], false), b"x");
    assert_refused(
        attempt(&origin, dir.path(), None, modelpull::runtime::Driver::Epoll),
        "UnknownIssuer",
    );
}

/// A certificate from the trusted CA for `names` (expired when asked) must still be refused.
fn assert_trusted_ca_refuses(names: &[&str], expired: bool, needle: &str) {
    let pki = pki();
    let (dir, origin) = serve(&leaf(&pki, names, expired), b"x");
    let driver = modelpull::runtime::Driver::Epoll;
    assert_refused(
        attempt(&origin, dir.path(), Some(&pki.ca_pem), driver),
        needle,
    );
}

#[test]
fn expired_certificate_is_refused() {
    assert_trusted_ca_refuses(&["localhost"], true, "certificate expired");
}

#[test]
fn certificate_for_another_host_is_refused() {
    assert_trusted_ca_refuses(&["models.example.com"], false, "not valid for name");
}

#[test]
fn unreadable_ca_bundle_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(modelpull::runtime::Driver::Epoll);
    opts.ca_bundle = Some(dir.path().join("missing.pem").into());
    let err = pull(
        vec![Target::parse("https://localhost:1/x").unwrap()],
        &dir.path().join("m"),
        &opts,
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::BadInput);
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

#[test]
fn verification_is_skipped_only_for_the_hosts_opted_out() {
    let pki = pki();
    let content = data(6, 100_000);
    let (dir, origin) = serve(&leaf(&pki, &["localhost"], false), &content);
    let driver = modelpull::runtime::Driver::Epoll;
    let target = || Target::parse(&origin.url_for_host("localhost", "model.bin")).unwrap();
    let mut opts = options(driver);
    opts.retries = 2;
    opts.insecure_hosts = vec!["other.example".into()];
    let refused = pull(vec![target()], &dir.path().join("a"), &opts);
    assert_refused(refused, "UnknownIssuer");
    opts.insecure_hosts = vec!["localhost".into()];
    pull(vec![target()], &dir.path().join("b"), &opts).unwrap();
    assert_file(&dir.path().join("b"), "model.bin", &content);
}
