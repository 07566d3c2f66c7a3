//! `modelpull pull hf://…` without a destination: the Hugging Face cache. What it writes is
//! read back by the real `huggingface_hub`, offline, as libraries read it
//! (`snapshot_download`, `try_to_load_from_cache`, `scan_cache_dir`); a new revision fetches
//! only the blobs the cache lacks and a repeat fetches nothing; a kill at any moment leaves no
//! snapshot or a whole one; `--local-dir` and DEST keep the plain layout.
//!
//! The Python client comes from `servers::venv()` (`$MODELPULL_TEST_VENV`); without it the
//! checks with it say so and are skipped, unless `MODELPULL_REQUIRE_SERVERS=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use modelpull_testkit::hub::{Hub, HubRepo, RouteKind, git_blob_sha1};
use modelpull_testkit::{Rng, SMALL_RANGES, assert_success, data, servers, sha256_hex};

const REPO: &str = "acme/tiny";
const REPO_DIR: &str = "models--acme--tiny";

/// One file of a fixture repo: path, content, stored with LFS.
type Spec = (&'static str, Vec<u8>, bool);

/// Nested folders, small and LFS files, an empty file, a space in a name, and the same
/// content at two paths (one blob, two links).
fn v1() -> Vec<Spec> {
    vec![
        ("config.json", b"{\"hidden_size\": 8}\n".to_vec(), false),
        (
            "copy/config.json",
            b"{\"hidden_size\": 8}\n".to_vec(),
            false,
        ),
        ("README.md", b"# tiny\n".to_vec(), false),
        ("empty.txt", Vec::new(), false),
        ("name with space.txt", b"spaces\n".to_vec(), false),
        ("sub/dir/data.txt", data(1, 1000), false),
        ("model.safetensors", data(2, 3 * 1024 * 1024 + 17), true),
        ("sub/dir/extra.bin", data(3, 70_000), true),
    ]
}

/// The next commit: the config and the weights changed, a file added, the rest as in v1.
fn v2() -> Vec<Spec> {
    let mut files: Vec<Spec> = v1()
        .into_iter()
        .filter(|(p, ..)| !matches!(*p, "config.json" | "model.safetensors"))
        .collect();
    files.push(("config.json", b"{\"hidden_size\": 16}\n".to_vec(), false));
    files.push(("model.safetensors", data(4, 2 * 1024 * 1024 + 5), true));
    files.push(("added.txt", b"new\n".to_vec(), false));
    files
}

fn repo(files: &[Spec]) -> HubRepo {
    files
        .iter()
        .fold(HubRepo::new(REPO), |r, (path, bytes, lfs)| {
            if *lfs {
                r.lfs_file(path, bytes.clone())
            } else {
                r.file(path, bytes.clone())
            }
        })
}

/// The name `huggingface_hub` gives a file's blob: the ETag the Hub sends for it.
fn blob_name((_, bytes, lfs): &Spec) -> String {
    if *lfs {
        sha256_hex(bytes)
    } else {
        git_blob_sha1(bytes)
    }
}

/// Bytes the distinct blobs of `files` hold.
fn blob_bytes<'a>(files: impl IntoIterator<Item = &'a Spec>) -> u64 {
    let mut seen = BTreeSet::new();
    files
        .into_iter()
        .filter(|f| seen.insert(blob_name(f)))
        .map(|(_, b, _)| b.len() as u64)
        .sum()
}

/// `modelpull pull ARGS` against `hub`, with the cache at `cache` (`HF_HUB_CACHE`).
fn command(hub: &Hub, cache: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelpull"));
    cmd.arg("pull")
        .args(args)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HUB_CACHE", cache);
    for var in [
        "RUST_LOG",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HUGGINGFACE_HUB_CACHE",
        "STORAGE_ALLOW_PATTERNS",
        "STORAGE_IGNORE_PATTERNS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn pull(hub: &Hub, cache: &Path, args: &[&str]) -> Output {
    command(hub, cache, args).output().expect("run modelpull")
}

/// Pulls with `--json` and returns the report, failing the test on an error.
fn pull_ok(hub: &Hub, cache: &Path, uri: &str) -> serde_json::Value {
    let out = pull(hub, cache, &["--json", uri]);
    assert!(
        out.status.success(),
        "{uri}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// File bytes the Hub and its CDN have sent so far.
fn served(hub: &Hub) -> u64 {
    hub.stats()
        .requests
        .iter()
        .filter(|r| matches!(r.kind, RouteKind::Resolve | RouteKind::Cdn))
        .filter(|r| matches!(r.status, 200 | 206))
        .map(|r| r.body_bytes)
        .sum()
}

fn commit_of(hub: &Hub, revision: &str) -> String {
    hub.commit_of(REPO, revision)
        .expect("a revision of the fixture")
}

/// Asserts `snapshots/<commit>` holds a link per file, to `../../blobs/<etag>` with one `..`
/// more per folder, and that each blob holds the file's bytes.
fn assert_snapshot(cache: &Path, commit: &str, files: &[Spec]) {
    let repo = cache.join(REPO_DIR);
    let snap = repo.join("snapshots").join(commit);
    for f in files {
        let (path, bytes, _) = f;
        let link = snap.join(path);
        let up = "../".repeat(2 + path.matches('/').count());
        assert_eq!(
            std::fs::read_link(&link).unwrap_or_else(|e| panic!("{path}: {e}")),
            PathBuf::from(format!("{up}blobs/{}", blob_name(f))),
            "{path}"
        );
        assert!(std::fs::read(&link).unwrap() == *bytes, "{path}: content");
    }
    let listed = walk_files(&snap);
    let expected: BTreeSet<String> = files.iter().map(|(p, ..)| p.to_string()).collect();
    assert_eq!(
        listed, expected,
        "the snapshot holds exactly the repo's files"
    );
}

/// Every non-directory entry under `dir`, by `/`-separated relative path.
fn walk_files(dir: &Path) -> BTreeSet<String> {
    modelpull_testkit::walk(dir)
        .into_iter()
        .filter(|p| !p.is_dir())
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

fn ref_of(cache: &Path, revision: &str) -> Option<String> {
    std::fs::read_to_string(cache.join(REPO_DIR).join("refs").join(revision)).ok()
}

/// What `support/hf_cache_check.py` reads from the cache with `huggingface_hub`; `None`
/// without the test virtualenv.
fn read_with_huggingface_hub(
    cache: &Path,
    revisions: &[&str],
    probe: (&str, &str),
) -> Option<serde_json::Value> {
    let venv = servers::venv()?;
    let plan = serde_json::json!({
        "cache": cache,
        "repo": REPO,
        "revisions": revisions,
        "probe": {"revision": probe.0, "filename": probe.1},
    });
    let out = servers::python(&venv, "hf_cache_check.py", &[], &plan.to_string());
    Some(serde_json::from_str(&out).expect("the script's JSON"))
}

/// Asserts `huggingface_hub` found `files` in the snapshot it returned for `revision`.
fn assert_read(found: &serde_json::Value, revision: &str, snap: &Path, files: &[Spec]) {
    let got = &found["snapshots"][revision];
    assert_eq!(
        Path::new(got["path"].as_str().unwrap()),
        snap,
        "{revision}: {got}"
    );
    let expected: BTreeMap<String, String> = files
        .iter()
        .map(|(p, b, _)| (p.to_string(), sha256_hex(b)))
        .collect();
    let got: BTreeMap<String, String> = serde_json::from_value(got["files"].clone()).unwrap();
    assert_eq!(got, expected, "{revision}: every file, byte for byte");
}

#[test]
fn the_cache_is_what_huggingface_hub_reads() {
    let files = v1();
    let hub = Hub::start(vec![repo(&files)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub-cache");
    let commit = commit_of(&hub, "main");
    let snap = cache.join(REPO_DIR).join("snapshots").join(&commit);

    let report = pull_ok(&hub, &cache, "hf://acme/tiny");
    assert_eq!(report["destination"], snap.to_str().unwrap());
    assert_eq!(report["up_to_date"], false);
    assert_eq!(report["files"].as_array().unwrap().len(), files.len());
    assert_snapshot(&cache, &commit, &files);
    assert_eq!(ref_of(&cache, "main").as_deref(), Some(commit.as_str()));
    let blobs: BTreeSet<String> = files.iter().map(blob_name).collect();
    assert_eq!(walk_files(&cache.join(REPO_DIR).join("blobs")), blobs);
    assert_eq!(
        served(&hub),
        blob_bytes(&files),
        "each distinct blob is fetched once"
    );
    assert_eq!(
        walk_files(&cache.join(REPO_DIR).join(".modelpull")),
        BTreeSet::from(["lock".to_owned()]),
        "nothing of the work is left but the lock"
    );

    let Some(found) = read_with_huggingface_hub(&cache, &["main"], ("main", "sub/dir/data.txt"))
    else {
        return;
    };
    assert_read(&found, "main", &snap, &files);
    assert_eq!(
        Path::new(
            found["probe"]
                .as_str()
                .expect("try_to_load_from_cache finds it")
        ),
        snap.join("sub/dir/data.txt")
    );
    let scan = &found["scan"];
    assert_eq!(scan["warnings"], serde_json::json!([]), "{scan}");
    assert_eq!(scan["incomplete"], 0, "{scan}");
    let repos = scan["repos"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{scan}");
    assert_eq!(repos[0]["repo_id"], REPO);
    assert_eq!(repos[0]["repo_type"], "model");
    assert_eq!(repos[0]["nb_files"], blobs.len());
    assert_eq!(repos[0]["size_on_disk"], blob_bytes(&files));
    let revisions = repos[0]["revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 1, "{scan}");
    assert_eq!(revisions[0]["commit"], commit.as_str());
    assert_eq!(revisions[0]["refs"], serde_json::json!(["main"]));
    assert_eq!(revisions[0]["files"].as_array().unwrap().len(), files.len());
}

#[test]
fn a_new_revision_fetches_only_new_blobs_and_a_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub-cache");
    let (old, new) = (v1(), v2());
    let first = Hub::start(vec![repo(&old)]).unwrap();
    let old_commit = commit_of(&first, "main");
    pull_ok(&first, &cache, "hf://acme/tiny");
    drop(first);

    // The Hub moved on: `main` and a branch `v2` now point to the next commit.
    let hub = Hub::start(vec![repo(&new).branch("v2")]).unwrap();
    let commit = commit_of(&hub, "v2");
    assert_ne!(commit, old_commit);
    let report = pull_ok(&hub, &cache, "hf://acme/tiny:v2");
    assert_eq!(report["up_to_date"], false);
    let old_blobs: BTreeSet<String> = old.iter().map(blob_name).collect();
    let fresh: Vec<&Spec> = new
        .iter()
        .filter(|f| !old_blobs.contains(&blob_name(f)))
        .collect();
    assert_eq!(fresh.len(), 3, "config, weights, added.txt");
    assert_eq!(
        served(&hub),
        blob_bytes(fresh),
        "only the blobs the cache lacked are fetched"
    );
    assert_snapshot(&cache, &commit, &new);
    assert_snapshot(&cache, &old_commit, &old);
    assert_eq!(ref_of(&cache, "v2").as_deref(), Some(commit.as_str()));
    assert_eq!(ref_of(&cache, "main").as_deref(), Some(old_commit.as_str()));

    let before = served(&hub);
    let again = pull(&hub, &cache, &["hf://acme/tiny:v2"]);
    assert!(again.status.success());
    // The summary goes to stderr; stdout holds only the snapshot's path.
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(text.contains("nothing to do"), "{text}");
    let printed = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        printed.trim(),
        cache
            .join("models--acme--tiny/snapshots")
            .join(&commit)
            .to_str()
            .unwrap()
    );
    assert_eq!(served(&hub), before, "a complete snapshot fetches nothing");

    // `main` moved to the same commit: its ref follows, nothing is fetched.
    let moved = pull_ok(&hub, &cache, "hf://acme/tiny");
    assert_eq!(moved["up_to_date"], true);
    assert_eq!(served(&hub), before);
    assert_eq!(ref_of(&cache, "main").as_deref(), Some(commit.as_str()));

    let Some(found) = read_with_huggingface_hub(
        &cache,
        &["main", "v2", old_commit.as_str()],
        ("v2", "added.txt"),
    ) else {
        return;
    };
    let snapshots = cache.join(REPO_DIR).join("snapshots");
    assert_read(&found, "main", &snapshots.join(&commit), &new);
    assert_read(&found, "v2", &snapshots.join(&commit), &new);
    assert_read(&found, &old_commit, &snapshots.join(&old_commit), &old);
    let scan = &found["scan"];
    assert_eq!(scan["warnings"], serde_json::json!([]), "{scan}");
    let repo = &scan["repos"][0];
    let all: Vec<&Spec> = old.iter().chain(&new).collect();
    assert_eq!(repo["size_on_disk"], blob_bytes(all), "blobs are shared");
    let refs: BTreeMap<String, serde_json::Value> = repo["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["commit"].as_str().unwrap().to_owned(), r["refs"].clone()))
        .collect();
    assert_eq!(
        refs,
        BTreeMap::from([
            (old_commit, serde_json::json!([])),
            (commit, serde_json::json!(["main", "v2"])),
        ])
    );
}

#[test]
fn a_commit_revision_writes_no_ref() {
    let files = v1();
    let hub = Hub::start(vec![repo(&files)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    let commit = commit_of(&hub, "main");
    pull_ok(&hub, &cache, &format!("hf://acme/tiny:{commit}"));
    assert_snapshot(&cache, &commit, &files);
    assert!(!cache.join(REPO_DIR).join("refs").exists());
}

#[test]
fn hf_home_is_used_without_hf_hub_cache() {
    let files = v1();
    let hub = Hub::start(vec![repo(&files)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let out = command(&hub, Path::new("unused"), &["hf://acme/tiny"])
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &home)
        .output()
        .unwrap();
    assert_success(&out);
    assert_snapshot(&home.join("hub"), &commit_of(&hub, "main"), &files);
}

#[test]
fn local_dir_and_dest_keep_the_plain_layout_and_other_sources_need_one() {
    let files = v1();
    let hub = Hub::start(vec![repo(&files)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for (i, how) in ["--local-dir", "DEST"].into_iter().enumerate() {
        let dest = dir.path().join(format!("m{i}"));
        let d = dest.to_str().unwrap();
        let args: &[&str] = match how {
            "--local-dir" => &["hf://acme/tiny", "--local-dir", d],
            _ => &["hf://acme/tiny", d],
        };
        let out = pull(&hub, &cache, args);
        assert!(
            out.status.success(),
            "{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (path, bytes, _) in &files {
            let meta = std::fs::symlink_metadata(dest.join(path)).unwrap();
            assert!(meta.is_file(), "{how}: {path} is a plain file");
            assert!(
                std::fs::read(dest.join(path)).unwrap() == *bytes,
                "{how}: {path}"
            );
        }
    }
    let out = pull(&hub, &cache, &["s3://bucket/model/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--local-dir"), "{err}");
    assert!(!cache.exists(), "nothing is written to the cache");
}

#[test]
fn a_kill_at_any_moment_leaves_no_snapshot_or_a_whole_one() {
    let files: Vec<Spec> = vec![
        ("config.json", b"{}".to_vec(), false),
        ("a/weights.bin", data(21, 8 * 1024 * 1024 + 3), true),
        ("b/c/more.bin", data(22, 3 * 1024 * 1024), true),
    ];
    let hub = Hub::start(vec![repo(&files)]).unwrap();
    let commit = commit_of(&hub, "main");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let snap = cache.join(REPO_DIR).join("snapshots").join(&commit);
    let args: Vec<&str> = ["hf://acme/tiny", "--limit-rate", "4M"]
        .into_iter()
        .chain(SMALL_RANGES)
        .collect();
    // At 4 MB/s a run that starts over needs 2.9 s, and every run is killed within 0.7 s:
    // only resuming what earlier runs fetched can finish.
    let mut rng = Rng::new(7);
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < 60, "the pull never completed");
        let mut child = command(&hub, &cache, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 600));
        let finished = child.try_wait().unwrap();
        if finished.is_none() {
            child.kill().unwrap();
        }
        let status = child.wait().unwrap();
        if snap.exists() {
            assert_snapshot(&cache, &commit, &files);
        }
        if finished.is_some() {
            assert!(status.success(), "run {runs} failed: {status}");
            break;
        }
    }
    assert_snapshot(&cache, &commit, &files);
    assert_eq!(ref_of(&cache, "main").as_deref(), Some(commit.as_str()));
    assert!(
        runs > 2,
        "only {runs} runs: the kills came too late to test anything"
    );
}
