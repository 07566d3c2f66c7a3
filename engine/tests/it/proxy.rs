//! Forward proxies through a real one (tinyproxy): plain http in absolute form, https through
//! a CONNECT tunnel with TLS end to end, NO_PROXY, proxy credentials, and a store's control
//! plane (S3 listing) going the same way as its data; and a proxy that intercepts HTTPS
//! (mitmproxy, as Dragonfly's dfdaemon does), whose CA is trusted through its tunnels only.

use std::sync::Arc;

use modelpull::ProxyConfig;
use modelpull::{Options, Target};
use modelpull_testkit::origin::Origin;
use modelpull_testkit::pki::{leaf, pki};
use modelpull_testkit::servers::{self, Server};
use modelpull_testkit::*;

fn with_proxy(mut opts: Options, vars: &[(&str, &str)]) -> Options {
    let config = ProxyConfig::from_env(|n| {
        vars.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap()
    .unwrap();
    opts.proxy = Some(Arc::new(config));
    opts
}

/// Lines of the proxy's log that mention `needle`.
fn proxied(proxy: &Server, needle: &str) -> usize {
    proxy.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn plain_http_goes_through_the_proxy_unless_no_proxy() {
    let Some(proxy) = servers::tinyproxy(None) else {
        return;
    };
    let content = data(1, 700_000);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let port = fx.origin.addr().port();
    let opts = with_proxy(
        options(modelpull::runtime::Driver::Epoll),
        &[("http_proxy", &proxy.url())],
    );
    pull(vec![fx.target("model.bin", true)], &fx.dest("a"), &opts).unwrap();
    assert_file(&fx.dest("a"), "model.bin", &content);
    let through = proxied(&proxy, &format!("127.0.0.1:{port}/model.bin"));
    assert!(
        through > 0,
        "requests went through the proxy: {}",
        proxy.log()
    );

    let opts = with_proxy(
        options(modelpull::runtime::Driver::Epoll),
        &[
            ("HTTP_PROXY", &proxy.url()),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
    );
    pull(vec![fx.target("model.bin", true)], &fx.dest("b"), &opts).unwrap();
    assert_eq!(
        proxied(&proxy, &format!("127.0.0.1:{port}/model.bin")),
        through,
        "NO_PROXY bypasses the proxy"
    );
}

#[test]
fn https_tunnels_through_connect_on_both_drivers() {
    let Some(proxy) = servers::tinyproxy(None) else {
        return;
    };
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let content = data(2, 900_000);
    std::fs::create_dir(dir.path().join("o")).unwrap();
    std::fs::write(dir.path().join("o/w.bin"), &content).unwrap();
    let origin =
        Origin::serve_tls(dir.path().join("o"), &leaf(&pki, &["localhost"], false)).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    each_driver(|driver| {
        let mut opts = with_proxy(options(driver), &[("HTTPS_PROXY", &proxy.url())]);
        opts.ca_bundle = Some(ca.clone().into());
        let target = Target::parse(&origin.url_for_host("localhost", "w.bin")).unwrap();
        let dest = dir.path().join(format!("out-{}", driver.name()));
        pull(vec![target], &dest, &opts).unwrap();
        assert_file(&dest, "w.bin", &content);
    });
    let port = origin.addr().port();
    assert!(
        proxied(&proxy, &format!("CONNECT localhost:{port}")) > 0,
        "a CONNECT tunnel was used: {}",
        proxy.log()
    );
}

#[test]
fn proxy_credentials_are_sent_and_never_shown() {
    let Some(proxy) = servers::tinyproxy(Some(("puller", "pr0xy-s3cret"))) else {
        return;
    };
    let content = data(3, 200_000);
    let fx = Fixture::new(&[("m.bin", &content)]);
    let good = format!("http://puller:pr0xy-s3cret@127.0.0.1:{}", proxy.port);
    let mut opts = with_proxy(
        options(modelpull::runtime::Driver::Epoll),
        &[("http_proxy", &good)],
    );
    opts.retries = 1;
    pull(vec![fx.target("m.bin", true)], &fx.dest("ok"), &opts).unwrap();
    assert_file(&fx.dest("ok"), "m.bin", &content);

    let bad = format!("http://puller:wrong-pass-123@127.0.0.1:{}", proxy.port);
    let mut opts = with_proxy(
        options(modelpull::runtime::Driver::Epoll),
        &[("http_proxy", &bad)],
    );
    opts.retries = 1;
    let err = pull(vec![fx.target("m.bin", true)], &fx.dest("no"), &opts).unwrap_err();
    let text = err.to_string();
    // tinyproxy answers a wrong password with 401 and a missing one with 407.
    assert!(text.contains("401") || text.contains("407"), "{text}");
    assert!(!text.contains("wrong-pass-123"), "{text}");
    assert!(!format!("{opts:?}").contains("wrong-pass-123"));
}

#[test]
fn store_listing_and_data_both_use_the_proxy() {
    let (Some(proxy), Some(venv)) = (servers::tinyproxy(None), servers::venv()) else {
        return;
    };
    let moto = servers::moto(&venv, false);
    let dir = tempfile::tempdir().unwrap();
    let content = data(4, 300_000);
    std::fs::write(dir.path().join("obj"), &content).unwrap();
    let plan = serde_json::json!({
        "endpoint": moto.url(), "bucket": "models",
        "objects": [{"key": "m/w.bin", "file": dir.path().join("obj")}],
    });
    servers::python(&venv, "s3_seed.py", &[], &plan.to_string());
    let env: modelpull::store::Env = [
        ("AWS_ENDPOINT_URL", moto.url()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ]
    .into_iter()
    .collect();
    let opts = with_proxy(store_options(), &[("http_proxy", &proxy.url())]);
    pull_uri("s3://models/m", &env, &dir.path().join("out"), &opts).unwrap();
    assert_file(&dir.path().join("out"), "w.bin", &content);
    let port = moto.port;
    assert!(
        proxied(&proxy, &format!("127.0.0.1:{port}/models/?list-type=2")) > 0,
        "listing: {}",
        proxy.log()
    );
    assert!(
        proxied(&proxy, &format!("127.0.0.1:{port}/models/m/w.bin")) > 0,
        "data: {}",
        proxy.log()
    );
}

#[test]
fn an_intercepting_proxy_is_trusted_through_its_tunnels_with_its_ca() {
    let pki = pki();
    let Some(mitm) = servers::mitmproxy(&pki.ca_pem) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let content = data(6, 10_000_000);
    std::fs::create_dir(dir.path().join("o")).unwrap();
    std::fs::write(dir.path().join("o/w.bin"), &content).unwrap();
    let origin =
        Origin::serve_tls(dir.path().join("o"), &leaf(&pki, &["localhost"], false)).unwrap();
    let port = origin.addr().port();
    let target = || Target::parse(&origin.url_for_host("localhost", "w.bin")).unwrap();
    let proxied = |driver| {
        let mut opts = with_proxy(options(driver), &[("HTTPS_PROXY", &mitm.server.url())]);
        opts.retries = 1;
        opts
    };

    // Without the proxy's CA the client sees a certificate it cannot trust, and is told why.
    let err = pull(
        vec![target()],
        &dir.path().join("untrusted"),
        &proxied(modelpull::runtime::Driver::Epoll),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--proxy-ca-bundle"), "{err}");
    assert!(err.contains("intercepts HTTPS"), "{err}");

    // With it, the pull goes through: the origin's own CA is trusted by the proxy only.
    each_driver(|driver| {
        let mut opts = proxied(driver);
        assert!(opts.trust_proxy_ca(mitm.ca_cert.clone().into()));
        let dest = dir.path().join(format!("out-{}", driver.name()));
        origin.stats().served.lock().unwrap().clear();
        pull(vec![target()], &dest, &opts).unwrap();
        assert_file(&dest, "w.bin", &content);
        // Ranges of at least 4 MiB, the size under which Dragonfly goes to the origin.
        let served = origin.stats().served.lock().unwrap().clone();
        let ranges: Vec<_> = served
            .iter()
            .filter(|(path, _, _)| path.ends_with("w.bin"))
            .collect();
        assert!(ranges.len() >= 2, "{served:?}");
        for (_, first, len) in ranges {
            assert!(
                *len >= modelpull::PROXY_MIN_RANGE || first + len == content.len() as u64,
                "a short range {first}+{len} through the proxy: {served:?}"
            );
        }
    });
    assert!(
        proxied_requests(&mitm, port) > 0,
        "the ranges went through mitmproxy: {}",
        mitm.server.log()
    );
}

#[test]
fn the_proxy_ca_is_never_trusted_on_a_direct_connection() {
    let pki = pki();
    let Some(mitm) = servers::mitmproxy(&pki.ca_pem) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("o")).unwrap();
    std::fs::write(dir.path().join("o/w.bin"), data(7, 100_000)).unwrap();
    // A certificate only the proxy's CA vouches for, on a host reached directly.
    let origin = Origin::serve_tls(dir.path().join("o"), &mitm.leaf(&["localhost"])).unwrap();
    let mut opts = with_proxy(
        options(modelpull::runtime::Driver::Epoll),
        &[
            ("HTTPS_PROXY", &mitm.server.url()),
            ("NO_PROXY", "localhost"),
        ],
    );
    opts.retries = 1;
    assert!(opts.trust_proxy_ca(mitm.ca_cert.clone().into()));
    let target = Target::parse(&origin.url_for_host("localhost", "w.bin")).unwrap();
    let err = pull(vec![target], &dir.path().join("out"), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("TLS with localhost failed"), "{err}");
    assert!(!err.contains("through proxy"), "{err}");
    assert_eq!(
        proxied_requests(&mitm, origin.addr().port()),
        0,
        "NO_PROXY bypasses the proxy: {}",
        mitm.server.log()
    );
}

/// Requests mitmproxy relayed to the origin on `port`.
fn proxied_requests(mitm: &servers::Mitm, port: u16) -> usize {
    proxied(&mitm.server, &format!("https://localhost:{port}/"))
}
