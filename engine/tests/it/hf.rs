//! `hf://` against the Hub fixture (`modelpull::hub`, proven faithful to `huggingface_hub` in
//! tests/hub.rs): the listing pinned to one commit and paged, LFS files by sha256 through a
//! CDN redirect without the token, small files by git blob sha1, gated/private/missing
//! repositories and revisions, presigned URLs that expire mid-pull, corrupt bytes.

use modelpull::store::Env;
use modelpull::{Error, ExitCode, Options};
use modelpull_testkit::hub::{Hub, HubRepo, Knobs, Listener, RouteKind};
use modelpull_testkit::*;

const TOKEN: &str = "hf_test_token_abcdef";

fn repo(id: &str) -> HubRepo {
    HubRepo::new(id)
        .file("config.json", "{\"layers\": 2}\n")
        .file("empty.txt", "")
        .file("tokenizer/vocab file.txt", data(1, 5000))
        .lfs_file(
            "model-00001-of-00002.safetensors",
            data(2, 2 * 1024 * 1024 + 3),
        )
        .lfs_file("model-00002-of-00002.safetensors", data(3, 1024 * 1024))
        .lfs_file("original/consolidated.pth", data(4, 300_000))
        .branch("v1.0")
}

fn env(hub: &Hub, token: Option<&str>) -> Env {
    let mut env: Env = [("HF_ENDPOINT", hub.endpoint())].into_iter().collect();
    if let Some(t) = token {
        env.set("HF_TOKEN", t);
    }
    env
}

fn assert_repo(dest: &std::path::Path, repo: &HubRepo) {
    for f in repo.files() {
        assert_file(dest, &f.path, &f.bytes);
    }
}

/// Small ranges so a 2 MiB file takes several requests.
fn small_ranges() -> Options {
    Options {
        chunk_size: 256 * 1024,
        range_size: 256 * 1024,
        memory_limit: 8 * 1024 * 1024,
        connections: Some(4),
        ..store_options()
    }
}

#[test]
fn public_repo_pinned_paged_and_verified() {
    let r = repo("acme/tiny");
    let hub = Hub::start(vec![r.clone()]).unwrap();
    hub.set_knobs(Knobs {
        tree_page_size: 2,
        ..Knobs::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m");
    let report = pull_uri("hf://acme/tiny", &env(&hub, None), &dest, &store_options()).unwrap();
    assert_repo(&dest, &r);
    assert_eq!(checksum_of(&report, "config.json"), "git blob sha1 (oid)");
    assert_eq!(
        checksum_of(&report, "model-00001-of-00002.safetensors"),
        "sha256 (lfs.oid)"
    );
    assert!(report.files.iter().all(|f| !f.verified.is_empty()));
    let stats = hub.stats();
    assert!(stats.count(RouteKind::Tree) > 3, "the tree came in pages");
    let commit = hub.commit_of("acme/tiny", "main").unwrap();
    assert!(
        stats
            .of(RouteKind::Resolve)
            .all(|r| r.path.contains(&format!("/resolve/{commit}/"))),
        "every file from the pinned commit"
    );
    assert!(
        stats.count(RouteKind::Cdn) >= 3,
        "LFS bytes came from the CDN"
    );
    assert!(
        stats
            .of(RouteKind::Resolve)
            .all(|r| !r.path.ends_with("/empty.txt")),
        "an empty file needs no request"
    );
    let again = pull_uri("hf://acme/tiny", &env(&hub, None), &dest, &store_options()).unwrap();
    assert!(again.up_to_date);
}

#[test]
fn revisions_by_branch_and_commit_and_filters() {
    let r = repo("acme/tiny");
    let hub = Hub::start(vec![r.clone()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let commit = hub.commit_of("acme/tiny", "v1.0").unwrap();
    for (i, uri) in [
        "hf://acme/tiny:v1.0".to_owned(),
        format!("hf://acme/tiny:{commit}"),
    ]
    .iter()
    .enumerate()
    {
        let dest = dir.path().join(format!("m{i}"));
        pull_uri(uri, &env(&hub, None), &dest, &store_options()).unwrap();
        assert_repo(&dest, &r);
    }
    let mut e = env(&hub, None);
    e.set("STORAGE_IGNORE_PATTERNS", r#"["original/", "*.pth"]"#);
    e.set("STORAGE_ALLOW_PATTERNS", "*.safetensors,*.json");
    let control = modelpull::store::Control::new(&store_options().client()).unwrap();
    let m = modelpull::store::resolve("hf://acme/tiny", &e, &control).unwrap();
    let paths: Vec<_> = m.files.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    assert_eq!(m.revision.as_deref(), Some(commit.as_str()));

    let caller = modelpull::Patterns {
        allow: vec!["tokenizer/".into()],
        ignore: Vec::new(),
    };
    let m = modelpull::store::resolve_filtered("hf://acme/tiny", &e, &control, &caller).unwrap();
    let paths: Vec<_> = m.files.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(
        paths,
        ["tokenizer/vocab file.txt"],
        "the caller's patterns replace the environment's, `tokenizer/` as a folder"
    );
    assert_eq!(m.skipped, r.files().len() - 1);

    let err = pull_uri(
        "hf://acme/tiny:no-such-branch",
        &env(&hub, None),
        &dir.path().join("x"),
        &store_options(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("revision `no-such-branch` does not exist in acme/tiny"),
        "{err}"
    );
    assert_eq!(err.exit_code(), ExitCode::Source);
}

#[test]
fn gated_and_private_repos_need_their_token_which_stays_off_the_cdn() {
    let gated = repo("acme/gated").gated(TOKEN);
    let private = repo("acme/private").private(TOKEN);
    let hub = Hub::start(vec![gated.clone(), private]).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let err = pull_uri(
        "hf://acme/gated",
        &env(&hub, None),
        &dir.path().join("a"),
        &store_options(),
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Auth, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("acme/gated is a gated repository") && text.contains("HF_TOKEN"),
        "{text}"
    );

    let err = pull_uri(
        "hf://acme/gated",
        &env(&hub, Some("hf_not_the_token")),
        &dir.path().join("wrong"),
        &store_options(),
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Auth, "{err}");
    assert!(
        err.to_string().contains("has not been granted access"),
        "{err}"
    );
    assert!(!err.to_string().contains("hf_not_the_token"));

    let err = pull_uri(
        "hf://acme/private",
        &env(&hub, None),
        &dir.path().join("b"),
        &store_options(),
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Auth, "{err}");
    assert!(err.to_string().contains("not found or is private"), "{err}");

    let err = pull_uri(
        "hf://acme/nothing-here",
        &env(&hub, Some(TOKEN)),
        &dir.path().join("c"),
        &store_options(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("acme/nothing-here"), "{err}");

    let dest = dir.path().join("ok");
    pull_uri(
        "hf://acme/gated",
        &env(&hub, Some(TOKEN)),
        &dest,
        &store_options(),
    )
    .unwrap();
    assert_repo(&dest, &gated);
    let stats = hub.stats();
    assert!(stats.on(Listener::Cdn).count() > 0);
    assert!(
        stats.on(Listener::Cdn).all(|r| !r.had_token()),
        "the token never reaches the CDN"
    );
    assert!(
        stats
            .of(RouteKind::Resolve)
            .filter(|r| r.status < 400)
            .all(|r| r.had_token()),
        "the Hub gets it on every request"
    );
    assert!(!text.contains(TOKEN));
}

#[test]
fn expired_cdn_urls_are_resolved_again() {
    let r = repo("acme/tiny");
    let hub = Hub::start(vec![r.clone()]).unwrap();
    // Every presigned URL works for two requests; a 2 MiB file needs eight.
    hub.set_knobs(Knobs {
        cdn_url_uses: Some(2),
        ..Knobs::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m");
    pull_uri("hf://acme/tiny", &env(&hub, None), &dest, &small_ranges()).unwrap();
    assert_repo(&dest, &r);
    let stats = hub.stats();
    assert!(
        stats.of(RouteKind::Cdn).any(|r| r.status == 403),
        "some URL expired mid-pull"
    );
    let lfs_resolves = stats
        .of(RouteKind::Resolve)
        .filter(|r| r.path.ends_with("model-00001-of-00002.safetensors"))
        .count();
    assert!(
        lfs_resolves > 1,
        "the file was resolved again ({lfs_resolves})"
    );
}

#[test]
fn corrupt_bytes_fail_verification() {
    for path in ["model-00002-of-00002.safetensors", "config.json"] {
        let hub = Hub::start(vec![repo("acme/tiny")]).unwrap();
        hub.set_knobs(Knobs {
            corrupt: Some(path.into()),
            ..Knobs::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m");
        let mut opts = store_options();
        opts.verify_attempts = 2;
        let err = pull_uri("hf://acme/tiny", &env(&hub, None), &dest, &opts).unwrap_err();
        match &err {
            Error::Verify { file, attempts, .. } => {
                assert_eq!(file, path);
                assert_eq!(*attempts, 2);
            }
            other => panic!("{path}: expected a verification failure, got {other}"),
        }
        assert!(!dest.exists());
    }
}
