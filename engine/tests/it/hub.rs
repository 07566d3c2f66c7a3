//! The Hub fixture (`modelpull::hub`) is faithful: the real `huggingface_hub` client downloads
//! from it byte for byte, verifies its checksums, and raises the documented errors for gated,
//! private and missing things. Its knobs and wire details are checked with raw HTTP/1.1.
//!
//! The Python client comes from the virtualenv at `$MODELPULL_TEST_VENV` (default
//! `.venv-test`, made by `scripts/setup-test.sh`); without it those tests say so and pass,
//! unless `MODELPULL_REQUIRE_SERVERS=1`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use modelpull_testkit::data;
use modelpull_testkit::hub::{Hub, HubRepo, Knobs, Listener, RouteKind, git_blob_sha1};
use modelpull_testkit::servers;

const REPO: &str = "acme/tiny";
const GATED: &str = "acme/gated";
const PRIVATE: &str = "acme/private";
const TOKEN: &str = "hf_fixture_token";

/// Nested folders, small and LFS files (one of 3 MiB), an empty file, a space in a name.
fn tiny(id: &str) -> HubRepo {
    HubRepo::new(id)
        .file(
            ".gitattributes",
            "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        )
        .file("config.json", "{\"hidden_size\": 8}\n")
        .file("README.md", "# tiny\n")
        .file("empty.txt", "")
        .file("name with space.txt", "spaces\n")
        .file("sub/dir/data.txt", data(1, 1000))
        .file("sub/notes.md", "notes\n")
        .file("nested/a/b/deep.txt", "deep\n")
        .lfs_file("model.safetensors", data(2, 3 * 1024 * 1024 + 17))
        .lfs_file("sub/dir/extra.bin", data(3, 70_000))
        .branch("refs/pr/1")
}

fn files_of(repo: &HubRepo) -> BTreeMap<String, Vec<u8>> {
    repo.files()
        .iter()
        .map(|f| (f.path.clone(), f.bytes.to_vec()))
        .collect()
}

fn start(repos: Vec<HubRepo>, page_size: usize) -> Hub {
    let hub = Hub::start(repos).unwrap();
    hub.set_knobs(Knobs {
        tree_page_size: page_size,
        ..Knobs::default()
    });
    hub
}

// ---------------------------------------------------------------------------------------------
// The real client.

/// The virtualenv's python (it has `huggingface_hub`; see `scripts/setup-test.sh`).
fn python() -> Option<&'static Path> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| servers::venv().map(|v| v.python()))
        .as_deref()
}

/// Downloads a snapshot, then checks it with `verify_repo_checksums`; prints the check as
/// JSON, or the exception's class and message on stderr (exit 3).
const SCRIPT: &str = r#"
import json, sys
from huggingface_hub import HfApi, snapshot_download

repo_id, revision, local_dir = sys.argv[1:4]
try:
    snapshot_download(repo_id, revision=revision, local_dir=local_dir)
    check = HfApi().verify_repo_checksums(repo_id, revision=revision, local_dir=local_dir)
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(3)
print(json.dumps({
    "checked": check.checked_count,
    "mismatches": [m["path"] for m in check.mismatches],
    "missing": check.missing_paths,
    "extra": check.extra_paths,
}))
"#;

/// What one run of [`SCRIPT`] did.
#[derive(Debug)]
struct Download {
    dir: tempfile::TempDir,
    /// The `verify_repo_checksums` result, when the download succeeded.
    check: Option<serde_json::Value>,
    stderr: String,
}

impl Download {
    fn local_dir(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    fn verified(&self) -> &serde_json::Value {
        self.check
            .as_ref()
            .unwrap_or_else(|| panic!("download failed:\n{}", self.stderr))
    }

    /// Asserts the download failed with the Python exception `class`.
    fn assert_raised(&self, class: &str) {
        assert!(self.check.is_none(), "download succeeded, {class} expected");
        assert!(
            self.stderr.contains(&format!("{class}: ")),
            "{class} expected:\n{}",
            self.stderr
        );
    }
}

fn snapshot_download(
    python: &Path,
    hub: &Hub,
    repo: &str,
    rev: &str,
    token: Option<&str>,
) -> Download {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(python);
    cmd.args(["-c", SCRIPT, repo, rev])
        .arg(dir.path().join("local"))
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", dir.path().join("hf-home"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_ETAG_TIMEOUT", "5")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "5");
    for var in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
    ] {
        cmd.env_remove(var);
    }
    for var in ["HF_HUB_CACHE", "HF_XET_CACHE", "TRANSFORMERS_OFFLINE"] {
        cmd.env_remove(var);
    }
    if let Some(token) = token {
        cmd.env("HF_TOKEN", token);
    }
    let out = cmd.output().expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let check = match out.status.code() {
        Some(0) => Some(serde_json::from_slice(&out.stdout).expect("json")),
        Some(3) => None,
        _ => panic!("python failed ({}):\n{stderr}", out.status),
    };
    Download { dir, check, stderr }
}

/// Every file under `dir` but the client's `.cache/huggingface/`, by `/`-separated path.
fn tree_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".cache" {
                continue;
            }
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Asserts the download holds exactly `expected` and the client's own check agrees.
fn assert_faithful(download: &Download, expected: &BTreeMap<String, Vec<u8>>) {
    let check = download.verified();
    assert_eq!(check["checked"], expected.len(), "{check}");
    for list in ["mismatches", "missing", "extra"] {
        assert_eq!(check[list], serde_json::json!([]), "{list}: {check}");
    }
    let got = tree_of(&download.local_dir());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in expected {
        assert!(got[path] == *bytes, "{path}: content differs");
    }
}

#[test]
fn snapshot_download_gets_every_file_byte_for_byte() {
    let Some(python) = python() else { return };
    let repo = tiny(REPO);
    let hub = start(vec![repo.clone()], 2);
    let download = snapshot_download(python, &hub, REPO, "main", None);
    assert_faithful(&download, &files_of(&repo));

    let stats = hub.stats();
    // 10 files and 5 directories, 2 a page; listed by the download and again by the check.
    assert_eq!(stats.count(RouteKind::Tree), 2 * 8);
    assert!(stats.of(RouteKind::Tree).all(|r| r.status == 200));
    let followed = stats
        .of(RouteKind::Tree)
        .filter(|r| r.query.as_deref().is_some_and(|q| q.contains("cursor=")));
    assert_eq!(followed.count(), 2 * 7, "pages reached by their Link");
    assert_eq!(stats.count(RouteKind::ModelInfo), 1);
    let lfs_gets = stats.on(Listener::Cdn).filter(|r| r.status == 200).count();
    assert_eq!(lfs_gets, 2, "one CDN GET per LFS file");
    assert_eq!(stats.count(RouteKind::Unknown), 0, "{stats:#?}");
    assert_eq!(stats.count(RouteKind::Telemetry), 0);
    let commit = hub.commit_of(REPO, "main").unwrap();
    assert!(
        stats
            .of(RouteKind::Resolve)
            .all(|r| r.path.starts_with(&format!("/{REPO}/resolve/{commit}/")))
    );
    assert!(
        stats
            .of(RouteKind::Resolve)
            .any(|r| r.path.ends_with("/name%20with%20space.txt"))
    );
}

#[test]
fn revisions_by_commit_and_by_ref_with_a_slash() {
    let Some(python) = python() else { return };
    let repo = tiny(REPO);
    let hub = start(vec![repo.clone()], 1000);
    let commit = hub.commit_of(REPO, "refs/pr/1").unwrap();
    assert_eq!(hub.commit_of(REPO, "main").as_ref(), Some(&commit));
    assert_faithful(
        &snapshot_download(python, &hub, REPO, &commit, None),
        &files_of(&repo),
    );
    assert_eq!(
        hub.stats().count(RouteKind::ModelInfo),
        0,
        "a commit needs no lookup"
    );

    assert_faithful(
        &snapshot_download(python, &hub, REPO, "refs/pr/1", None),
        &files_of(&repo),
    );
    let stats = hub.stats();
    let info: Vec<_> = stats.of(RouteKind::ModelInfo).collect();
    assert_eq!(info.len(), 1);
    assert!(
        info[0].path.ends_with("/revision/refs%2Fpr%2F1"),
        "{info:?}"
    );
}

#[test]
fn gated_repo_needs_its_token_which_never_reaches_the_cdn() {
    let Some(python) = python() else { return };
    let repo = tiny(GATED).gated(TOKEN);
    let hub = start(vec![repo.clone()], 3);
    snapshot_download(python, &hub, GATED, "main", None).assert_raised("GatedRepoError");
    snapshot_download(python, &hub, GATED, "main", Some("hf_other"))
        .assert_raised("GatedRepoError");
    let refused = hub.stats();
    assert!(refused.requests.iter().any(|r| r.status == 401));
    assert!(refused.requests.iter().any(|r| r.status == 403));
    assert_eq!(refused.on(Listener::Cdn).count(), 0);

    let download = snapshot_download(python, &hub, GATED, "main", Some(TOKEN));
    assert_faithful(&download, &files_of(&repo));
    let stats = hub.stats();
    let run = &stats.requests[refused.requests.len()..];
    let expected = format!("Bearer {TOKEN}");
    for r in run {
        match r.listener {
            Listener::Hub => assert_eq!(r.authorization.as_ref(), Some(&expected), "{r:?}"),
            Listener::Cdn => assert!(!r.had_token(), "token sent to the CDN: {r:?}"),
        }
    }
    assert_eq!(
        run.iter().filter(|r| r.listener == Listener::Cdn).count(),
        2
    );
}

#[test]
fn private_and_unknown_repos_are_not_found() {
    let Some(python) = python() else { return };
    let hub = start(vec![tiny(PRIVATE).private(TOKEN)], 1000);
    snapshot_download(python, &hub, PRIVATE, "main", None).assert_raised("RepositoryNotFoundError");
    snapshot_download(python, &hub, "acme/nothing", "main", Some(TOKEN))
        .assert_raised("RepositoryNotFoundError");
}

#[test]
fn missing_revision_is_revision_not_found() {
    let Some(python) = python() else { return };
    let hub = start(vec![tiny(REPO)], 1000);
    snapshot_download(python, &hub, REPO, "no-such-branch", None)
        .assert_raised("RevisionNotFoundError");
}

#[test]
fn corrupt_bytes_are_caught_by_verify_repo_checksums() {
    let Some(python) = python() else { return };
    let hub = start(vec![tiny(REPO)], 1000);
    hub.set_knobs(Knobs {
        corrupt: Some("model.safetensors".into()),
        ..hub.knobs()
    });
    let download = snapshot_download(python, &hub, REPO, "main", None);
    assert_eq!(
        download.verified()["mismatches"],
        serde_json::json!(["model.safetensors"])
    );
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1, one keep-alive connection per listener.

#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Conn {
    host: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to the `http://host:port` of `url`.
    fn to(url: &str) -> Self {
        let host = url
            .strip_prefix("http://")
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let stream = TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Self {
            host,
            reader: BufReader::new(stream),
        }
    }

    /// Sends a request for `target` (a path, or a URL on this connection's host).
    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Raw {
        let prefix = format!("http://{}", self.host);
        let target = target.strip_prefix(&prefix).unwrap_or(target);
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        self.read(method == "HEAD")
    }

    fn read(&mut self, head: bool) -> Raw {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        let length: usize = raw.header("content-length").unwrap().parse().unwrap();
        if !head {
            raw.body = vec![0; length];
            self.reader.read_exact(&mut raw.body).unwrap();
        }
        raw
    }
}

#[test]
fn resolve_serves_small_files_with_ranges_and_lfs_files_by_the_cdn() {
    let repo = tiny(REPO);
    let files = files_of(&repo);
    let hub = start(vec![repo], 1000);
    let commit = hub.commit_of(REPO, "main").unwrap();
    let mut conn = Conn::to(&hub.endpoint());
    let config = &files["config.json"];

    let head = conn.send("HEAD", &format!("/{REPO}/resolve/main/config.json"), &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(&*config.len().to_string())
    );
    assert_eq!(head.header("x-repo-commit"), Some(&*commit));
    let etag = format!("\"{}\"", git_blob_sha1(config));
    assert_eq!(head.header("etag"), Some(&*etag));
    assert_eq!(head.header("x-linked-size"), None);

    let path = format!("/{REPO}/resolve/{commit}/sub/dir/data.txt");
    let part = conn.send("GET", &path, &[("Range", "bytes=10-19")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(part.body, files["sub/dir/data.txt"][10..20]);
    let beyond = conn.send("GET", &path, &[("Range", "bytes=1000-")]);
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */1000"));
    let spaced = conn.send(
        "GET",
        &format!("/{REPO}/resolve/main/name%20with%20space.txt"),
        &[],
    );
    assert_eq!(spaced.body, files["name with space.txt"]);

    let model = &files["model.safetensors"];
    let lfs = conn.send(
        "HEAD",
        &format!("/{REPO}/resolve/refs%2Fpr%2F1/model.safetensors"),
        &[],
    );
    assert_eq!(lfs.status, 302);
    assert_eq!(lfs.header("x-repo-commit"), Some(&*commit));
    assert_eq!(lfs.header("x-linked-size"), Some(&*model.len().to_string()));
    let sha = modelpull_testkit::hub::lfs_pointer(model)
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("oid sha256:")
        .to_owned();
    assert_eq!(lfs.header("x-linked-etag"), Some(&*format!("\"{sha}\"")));
    assert_eq!(lfs.header("etag"), Some(&*format!("\"{sha}\"")));
    let location = lfs.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{}/lfs/{sha}?expires=", hub.cdn_endpoint())),
        "{location}"
    );
    assert!(
        lfs.headers
            .iter()
            .all(|(n, _)| !n.to_ascii_lowercase().contains("xet"))
    );

    let mut cdn = Conn::to(location);
    let whole = cdn.send("GET", location, &[]);
    assert_eq!(whole.status, 200);
    assert!(whole.body == *model);
    assert_eq!(whole.header("etag"), Some(&*format!("\"{sha}\"")));
    let tail = cdn.send("GET", location, &[("Range", "bytes=-5")]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, model[model.len() - 5..]);

    let missing = conn.send("HEAD", &format!("/{REPO}/resolve/main/nope.txt"), &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-error-code"), Some("EntryNotFound"));
    assert_eq!(missing.header("x-repo-commit"), Some(&*commit));
    let empty = conn.send("HEAD", &format!("/{REPO}/resolve/main/empty.txt"), &[]);
    assert_eq!(
        (empty.status, empty.header("content-length")),
        (200, Some("0"))
    );
}

#[test]
fn api_errors_carry_the_hub_error_codes() {
    let hub = start(vec![tiny(REPO), tiny(GATED).gated(TOKEN)], 1000);
    let mut conn = Conn::to(&hub.endpoint());
    let code = |r: &Raw| (r.status, r.header("x-error-code").map(str::to_owned));
    let rev = conn.send("GET", &format!("/api/models/{REPO}/revision/nope"), &[]);
    assert_eq!(code(&rev), (404, Some("RevisionNotFound".into())));
    let unknown = conn.send("GET", "/api/models/acme/nothing/revision/main", &[]);
    assert_eq!(code(&unknown), (401, Some("RepoNotFound".into())));
    let gated = conn.send("GET", &format!("/{GATED}/resolve/main/config.json"), &[]);
    assert_eq!(code(&gated), (401, Some("GatedRepo".into())));
    assert!(gated.header("x-error-message").is_some());
    let wrong = [("Authorization", "Bearer hf_other")];
    let gated = conn.send("GET", &format!("/api/models/{GATED}/tree/main"), &wrong);
    assert_eq!(code(&gated), (403, Some("GatedRepo".into())));
    let right = format!("Bearer {TOKEN}");
    let info = conn.send(
        "GET",
        &format!("/api/models/{GATED}/revision/main"),
        &[("Authorization", &right)],
    );
    assert_eq!(info.status, 200);
    let info: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    assert_eq!(info["id"], GATED);
    assert_eq!(info["sha"], hub.commit_of(GATED, "main").unwrap());
    assert_eq!(info["siblings"].as_array().unwrap().len(), 10);
    assert_eq!(info["siblings"][0]["rfilename"], ".gitattributes");
    let telemetry = conn.send("GET", "/api/agent-harnesses", &[]);
    assert_eq!(telemetry.status, 404);
    assert_eq!(hub.stats().count(RouteKind::Telemetry), 1);
}

/// Every entry of a listing, following `Link: <…>; rel="next"` from `first`.
fn list(conn: &mut Conn, first: &str) -> (Vec<serde_json::Value>, usize) {
    let (mut entries, mut pages, mut next) = (Vec::new(), 0, Some(first.to_owned()));
    while let Some(target) = next.take() {
        let page = conn.send("GET", &target, &[]);
        assert_eq!(page.status, 200, "{target}");
        pages += 1;
        let batch: Vec<serde_json::Value> = serde_json::from_slice(&page.body).unwrap();
        entries.extend(batch);
        next = page.header("link").map(|link| {
            let url = link
                .strip_prefix('<')
                .unwrap()
                .split_once(">; rel=\"next\"")
                .unwrap()
                .0;
            assert!(url.starts_with("http://127.0.0.1:"), "absolute: {url}");
            url.to_owned()
        });
    }
    (entries, pages)
}

#[test]
fn tree_pages_are_linked_with_absolute_urls() {
    let hub = start(vec![tiny(REPO)], 2);
    let commit = hub.commit_of(REPO, "main").unwrap();
    let mut conn = Conn::to(&hub.endpoint());
    let root = format!("/api/models/{REPO}/tree/{commit}?recursive=true&expand=false");
    let (entries, pages) = list(&mut conn, &root);
    assert_eq!((entries.len(), pages), (15, 8));
    let dirs: Vec<_> = entries
        .iter()
        .filter(|e| e["type"] == "directory")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(dirs, ["nested", "nested/a", "nested/a/b", "sub", "sub/dir"]);
    let config = entries.iter().find(|e| e["path"] == "config.json").unwrap();
    assert_eq!(config["oid"], git_blob_sha1(b"{\"hidden_size\": 8}\n"));
    assert!(entries.iter().all(|e| e.get("xetHash").is_none()));

    let sub = format!("/api/models/{REPO}/tree/main/sub%2Fdir?recursive=false&expand=false");
    let (entries, _) = list(&mut conn, &sub);
    let paths: Vec<_> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["sub/dir/data.txt", "sub/dir/extra.bin"]);
    assert_eq!(entries[1]["lfs"]["size"], 70_000);
    let shallow = format!("/api/models/{REPO}/tree/refs%2Fpr%2F1/sub?recursive=false");
    let (entries, _) = list(&mut conn, &shallow);
    let paths: Vec<_> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["sub/dir", "sub/notes.md"]);
    let missing = conn.send("GET", &format!("/api/models/{REPO}/tree/main/nope"), &[]);
    assert_eq!(
        (missing.status, missing.header("x-error-code")),
        (404, Some("EntryNotFound"))
    );
}

#[test]
fn cdn_urls_expire_and_a_fresh_resolve_gives_a_fresh_one() {
    let hub = start(vec![tiny(REPO)], 1000);
    hub.set_knobs(Knobs {
        cdn_url_uses: Some(2),
        ..hub.knobs()
    });
    let mut conn = Conn::to(&hub.endpoint());
    let resolve = format!("/{REPO}/resolve/main/sub/dir/extra.bin");
    let first = conn
        .send("HEAD", &resolve, &[])
        .header("location")
        .unwrap()
        .to_owned();
    let mut cdn = Conn::to(&first);
    for _ in 0..2 {
        assert_eq!(
            cdn.send("GET", &first, &[("Range", "bytes=0-9")]).status,
            206
        );
    }
    let expired = cdn.send("GET", &first, &[("Range", "bytes=10-19")]);
    assert_eq!(expired.status, 403);
    assert!(
        String::from_utf8_lossy(&expired.body).contains("<Message>Request has expired</Message>")
    );

    let second = conn
        .send("GET", &resolve, &[])
        .header("location")
        .unwrap()
        .to_owned();
    assert_ne!(first, second);
    assert_eq!(cdn.send("GET", &second, &[]).status, 200);
    let forged = first.replace("sig=", "sig=0");
    assert_eq!(cdn.send("GET", &forged, &[]).status, 403);
}

#[test]
fn corrupt_flips_one_byte_on_resolve_and_cdn() {
    let repo = tiny(REPO);
    let files = files_of(&repo);
    let hub = start(vec![repo], 1000);
    let mut conn = Conn::to(&hub.endpoint());
    for path in ["sub/dir/data.txt", "sub/dir/extra.bin"] {
        hub.set_knobs(Knobs {
            corrupt: Some(path.into()),
            ..hub.knobs()
        });
        let mut reply = conn.send("GET", &format!("/{REPO}/resolve/main/{path}"), &[]);
        if let Some(location) = reply.header("location").map(str::to_owned) {
            reply = Conn::to(&location).send("GET", &location, &[]);
        }
        let expected = &files[path];
        assert_eq!(reply.body.len(), expected.len());
        let differ = reply
            .body
            .iter()
            .zip(expected)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 1, "{path}");
    }
}
