//! A Hugging Face Hub for the tests: serves model repos over HTTP/1.1 (hyper) the way
//! huggingface.co does, so the `hf://` store can be tested without the network.
//!
//! Why in-tree: the Hub's protocol is small but exact (a revision resolves to a commit, the
//! file tree comes in pages linked by absolute `Link` headers, `resolve` answers with
//! `X-Repo-Commit` and `X-Linked-*` headers and sends LFS files to a CDN with a presigned
//! URL, errors are keyed by `X-Error-Code`), and the tests need to make it misbehave in the
//! ways the real one does: presigned URLs that expire mid-download, gated and private repos,
//! corrupt bytes. They also need to see every request, for example to prove that the token
//! never reaches the CDN. The engine's `tests/it/hub.rs` proves the fixture faithful with the real Python
//! client, `huggingface_hub`.
//!
//! It is one long file because every route shares one state (repos, knobs, the request log)
//! and one set of Hub error conventions; split, each part would import all the others.
//!
//! Like [`crate::origin::Origin`], it runs on its own tokio runtime in a background thread and stops
//! when dropped. It has two listeners on 127.0.0.1, the Hub and its CDN, on different ports,
//! hence different origins as a client sees them. [`Hub`] lists where it differs from the real
//! Hub.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use sha2::Digest as _;

/// The branch every repo has.
pub const MAIN: &str = "main";

/// Who may read a repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Readable with `Authorization: Bearer <token>`; otherwise 401 (no token) or 403 (another
    /// token) with `X-Error-Code: GatedRepo`.
    Gated {
        token: String,
    },
    /// Readable with the token; otherwise 401 (no token) or 404 (another token) with
    /// `X-Error-Code: RepoNotFound`, as if it did not exist.
    Private {
        token: String,
    },
}

/// One file of a [`HubRepo`].
#[derive(Debug, Clone)]
pub struct HubFile {
    /// Repo-relative, `/`-separated.
    pub path: String,
    pub bytes: Bytes,
    /// Stored with Git LFS: listed with its `lfs` metadata and served from the CDN.
    pub lfs: bool,
}

/// A model repo to serve: its files at one commit, the branches that point to that commit,
/// and who may read it.
#[derive(Debug, Clone)]
pub struct HubRepo {
    id: String,
    files: Vec<HubFile>,
    branches: Vec<String>,
    access: Access,
}

impl HubRepo {
    /// A public repo `owner/name` with no files and the branch `main`.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            files: Vec::new(),
            branches: vec![MAIN.to_owned()],
            access: Access::Public,
        }
    }

    /// Adds a regular (git) file.
    pub fn file(self, path: &str, bytes: impl Into<Bytes>) -> Self {
        self.with_file(path, bytes.into(), false)
    }

    /// Adds a Git LFS file.
    pub fn lfs_file(self, path: &str, bytes: impl Into<Bytes>) -> Self {
        self.with_file(path, bytes.into(), true)
    }

    /// Adds a branch (or any other ref name, such as `refs/pr/1`) pointing to the commit.
    pub fn branch(mut self, name: &str) -> Self {
        self.branches.push(name.to_owned());
        self
    }

    /// Makes the repo gated, readable with `token`.
    pub fn gated(mut self, token: &str) -> Self {
        self.access = Access::Gated {
            token: token.to_owned(),
        };
        self
    }

    /// Makes the repo private, readable with `token`.
    pub fn private(mut self, token: &str) -> Self {
        self.access = Access::Private {
            token: token.to_owned(),
        };
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn files(&self) -> &[HubFile] {
        &self.files
    }

    fn with_file(mut self, path: &str, bytes: Bytes, lfs: bool) -> Self {
        self.files.push(HubFile {
            path: path.to_owned(),
            bytes,
            lfs,
        });
        self
    }
}

/// How `GET /api/agent-harnesses`, the client's telemetry probe, is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Telemetry {
    /// 404, which the client ignores.
    #[default]
    NotFound,
    /// 200 with an empty registry.
    Empty,
}

/// Behaviour that tests change while the Hub runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// Entries per page of the tree listing (the Hub's is 1000).
    pub tree_page_size: usize,
    /// A CDN URL answers 403 "Request has expired" after this many requests on it, as a
    /// presigned URL that expires mid-download. A fresh resolve gives a fresh URL.
    pub cdn_url_uses: Option<u32>,
    /// The repo path whose served bytes (resolve and CDN) have one byte flipped.
    pub corrupt: Option<String>,
    pub telemetry: Telemetry,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            tree_page_size: 1000,
            cdn_url_uses: None,
            corrupt: None,
            telemetry: Telemetry::NotFound,
        }
    }
}

/// Which listener a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Hub,
    Cdn,
}

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `/api/agent-harnesses`.
    Telemetry,
    /// `/api/models/{repo}[/revision/{rev}]`.
    ModelInfo,
    /// `/api/models/{repo}/tree/{rev}[/{path}]`.
    Tree,
    /// `/{repo}/resolve/{rev}/{path}`.
    Resolve,
    /// `/lfs/{sha256}` on the CDN.
    Cdn,
    Unknown,
}

/// One request the Hub answered.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub listener: Listener,
    pub method: Method,
    /// The `Host` header.
    pub host: String,
    /// The path, as sent (percent-encoded), without the query.
    pub path: String,
    pub query: Option<String>,
    pub kind: RouteKind,
    pub status: u16,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// Body bytes sent.
    pub body_bytes: u64,
}

impl SeenRequest {
    pub fn had_token(&self) -> bool {
        self.authorization.is_some()
    }
}

/// Every request so far, for assertions.
#[derive(Debug, Clone, Default)]
pub struct HubStats {
    pub requests: Vec<SeenRequest>,
}

impl HubStats {
    pub fn count(&self, kind: RouteKind) -> usize {
        self.of(kind).count()
    }

    pub fn of(&self, kind: RouteKind) -> impl Iterator<Item = &SeenRequest> {
        self.requests.iter().filter(move |r| r.kind == kind)
    }

    pub fn on(&self, listener: Listener) -> impl Iterator<Item = &SeenRequest> {
        self.requests.iter().filter(move |r| r.listener == listener)
    }
}

/// A running Hub and its CDN; both stop when dropped.
///
/// Where it differs from huggingface.co:
/// - models only (no datasets or spaces), repo ids `owner/name` only;
/// - one commit per repo: every branch points to it, and there is no history;
/// - a gated repo refuses every route without the token, including the model info and tree
///   that the real Hub shows to anyone;
/// - `expand=true` is ignored (no `lastCommit` or security status), the page size stays the
///   same, cursors are plain offsets;
/// - resolve answers small files directly, also for branch names (the Hub 307s those to
///   `/api/resolve-cache/...`), and LFS files always with a 302 to the CDN;
/// - no Xet: no `xetHash` in the tree, no `X-Xet-*` headers or `xet-auth` links;
/// - no `Content-Disposition`, `Vary`, rate limits, or repo renames.
#[derive(Debug)]
pub struct Hub {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// Serves `repos` on two free ports of 127.0.0.1.
    pub fn start(repos: Vec<HubRepo>) -> io::Result<Self> {
        let mut by_id = HashMap::new();
        for repo in repos {
            let repo = Repo::prepare(repo)?;
            if by_id.contains_key(&repo.id) {
                return Err(invalid(format!("repo {} given twice", repo.id)));
            }
            by_id.insert(repo.id.clone(), repo);
        }
        let hub = bind()?;
        let cdn = bind()?;
        let shared = Arc::new(Shared {
            repos: by_id,
            hub_addr: hub.local_addr()?,
            cdn_addr: cdn.local_addr()?,
            knobs: Mutex::new(Knobs::default()),
            seen: Mutex::new(Vec::new()),
            presigned: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("modelpull-hub".into())
            .spawn(move || run(hub, cdn, shared2, stopped))?;
        Ok(Self {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, what `HF_ENDPOINT` should be.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.shared.hub_addr)
    }

    /// `http://127.0.0.1:PORT` of the CDN.
    pub fn cdn_endpoint(&self) -> String {
        format!("http://{}", self.shared.cdn_addr)
    }

    /// The commit `revision` (a branch, or the commit itself) of `repo_id` points to.
    pub fn commit_of(&self, repo_id: &str, revision: &str) -> Option<String> {
        let repo = self.shared.repos.get(repo_id)?;
        repo.revision(revision).map(str::to_owned)
    }

    pub fn knobs(&self) -> Knobs {
        self.shared.knobs().clone()
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        *self.shared.knobs() = knobs;
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            requests: self.shared.seen.lock().expect("seen").clone(),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn bind() -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

// ---------------------------------------------------------------------------------------------
// Git objects: the ids the Hub shows are git's, so a client can check files against them.

/// The git blob id (sha1 of `blob {len}\0` and the content), as the Hub's `oid` of a file.
pub fn git_blob_sha1(data: &[u8]) -> String {
    hex::encode(git_object("blob", data))
}

/// The Git LFS pointer file that git stores in place of `data`.
pub fn lfs_pointer(data: &[u8]) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        sha256_hex(data),
        data.len()
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn git_object(kind: &str, data: &[u8]) -> [u8; 20] {
    let mut h = sha1::Sha1::new();
    h.update(format!("{kind} {}\0", data.len()).as_bytes());
    h.update(data);
    h.finalize().into()
}

/// The author and committer of every fixture commit, with a fixed date.
const SIGNATURE: &str = "modelpull fixture <fixture@modelpull.invalid> 1700000000 +0000";

/// The git commit of `tree`, a deterministic function of the files and the repo id.
fn git_commit(tree: &str, repo_id: &str) -> String {
    let text = format!("tree {tree}\nauthor {SIGNATURE}\ncommitter {SIGNATURE}\n\n{repo_id}\n");
    hex::encode(git_object("commit", text.as_bytes()))
}

/// A directory as git stores it: names to (hex) blob ids, and subdirectories.
#[derive(Debug, Default)]
struct GitDir {
    files: BTreeMap<String, String>,
    dirs: BTreeMap<String, GitDir>,
}

impl GitDir {
    fn insert(&mut self, path: &str, oid: String) {
        match path.split_once('/') {
            Some((dir, rest)) => self
                .dirs
                .entry(dir.to_owned())
                .or_default()
                .insert(rest, oid),
            None => {
                self.files.insert(path.to_owned(), oid);
            }
        }
    }

    /// This tree's git id; records the id of every directory below under its path in `ids`.
    fn oid(&self, path: &str, ids: &mut BTreeMap<String, String>) -> String {
        // Git orders entries by name, a directory's name with a `/` appended.
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, oid) in &self.files {
            entries.push((name.clone(), tree_entry("100644", name, oid)));
        }
        for (name, dir) in &self.dirs {
            let sub = join(path, name);
            let oid = dir.oid(&sub, ids);
            entries.push((format!("{name}/"), tree_entry("40000", name, &oid)));
            ids.insert(sub, oid);
        }
        entries.sort();
        let data: Vec<u8> = entries.into_iter().flat_map(|(_, e)| e).collect();
        hex::encode(git_object("tree", &data))
    }
}

fn tree_entry(mode: &str, name: &str, oid: &str) -> Vec<u8> {
    let mut e = format!("{mode} {name}\0").into_bytes();
    e.extend(hex::decode(oid).expect("git ids are hex"));
    e
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

// ---------------------------------------------------------------------------------------------
// Repos as served.

#[derive(Debug)]
struct Repo {
    id: String,
    access: Access,
    commit: String,
    branches: Vec<String>,
    files: BTreeMap<String, Blob>,
    /// Directory path to git tree id.
    dirs: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Blob {
    bytes: Bytes,
    /// The git blob id of what git stores: the content, or the LFS pointer.
    oid: String,
    lfs: Option<LfsMeta>,
}

#[derive(Debug)]
struct LfsMeta {
    sha256: String,
    pointer_size: u64,
}

impl Blob {
    fn new(file: HubFile) -> Self {
        let (oid, lfs) = if file.lfs {
            let pointer = lfs_pointer(&file.bytes);
            let meta = LfsMeta {
                sha256: sha256_hex(&file.bytes),
                pointer_size: pointer.len() as u64,
            };
            (git_blob_sha1(pointer.as_bytes()), Some(meta))
        } else {
            (git_blob_sha1(&file.bytes), None)
        };
        Self {
            bytes: file.bytes,
            oid,
            lfs,
        }
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The quoted ETag resolve sends: the git id, or the content's sha256 for LFS files.
    fn etag(&self) -> String {
        let id = self.lfs.as_ref().map_or(&self.oid, |l| &l.sha256);
        format!("\"{id}\"")
    }
}

impl Repo {
    fn prepare(repo: HubRepo) -> io::Result<Self> {
        check_repo_id(&repo.id)?;
        let mut files = BTreeMap::new();
        let mut root = GitDir::default();
        for file in repo.files {
            modelpull::target::check_relative_path(&file.path)
                .map_err(|e| invalid(format!("{}: path {e}", repo.id)))?;
            let path = file.path.clone();
            let blob = Blob::new(file);
            root.insert(&path, blob.oid.clone());
            if files.insert(path.clone(), blob).is_some() {
                return Err(invalid(format!("{}: {path} given twice", repo.id)));
            }
        }
        let mut dirs = BTreeMap::new();
        let commit = git_commit(&root.oid("", &mut dirs), &repo.id);
        Ok(Self {
            id: repo.id,
            access: repo.access,
            commit,
            branches: repo.branches,
            files,
            dirs,
        })
    }

    /// The commit `rev` names, if any.
    fn revision(&self, rev: &str) -> Option<&str> {
        (rev == self.commit || self.branches.iter().any(|b| b == rev)).then_some(&self.commit)
    }

    /// Splits `segments` (percent-encoded) into a revision and the rest, keeping at least
    /// `keep` segments for the rest. The revision may be one encoded segment (`refs%2Fpr%2F1`)
    /// or several (`refs/pr/1`), as the Hub accepts both.
    fn split_revision<'s>(
        &self,
        segments: &'s [&'s str],
        keep: usize,
    ) -> Result<(&str, &'s [&'s str]), String> {
        for n in 1..=segments.len().saturating_sub(keep) {
            let rev = decode(&segments[..n].join("/"));
            if let Some(commit) = self.revision(&rev) {
                return Ok((commit, &segments[n..]));
            }
        }
        Err(segments.first().map(|s| decode(s)).unwrap_or_default())
    }

    /// The tree entries under `dir` (`""` for the root): its children, or with `recursive`
    /// everything below it, directories included.
    fn entries(&self, dir: &str, recursive: bool) -> Vec<TreeEntry<'_>> {
        let wanted = |path: &str| {
            let inside = dir.is_empty()
                || path
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/'));
            inside && (recursive || parent(path) == dir)
        };
        let files = self
            .files
            .iter()
            .filter(|(p, _)| wanted(p))
            .map(|(path, b)| {
                let lfs = b.lfs.as_ref().map(|l| LfsEntry {
                    oid: &l.sha256,
                    size: b.size(),
                    pointer_size: l.pointer_size,
                });
                TreeEntry::File {
                    oid: &b.oid,
                    size: b.size(),
                    path,
                    lfs,
                }
            });
        let dirs = self
            .dirs
            .iter()
            .filter(|(p, _)| wanted(p))
            .map(|(path, oid)| TreeEntry::Directory { oid, size: 0, path });
        let mut all: Vec<_> = files.chain(dirs).collect();
        all.sort_by(|a, b| a.path().cmp(b.path()));
        all
    }
}

fn check_repo_id(id: &str) -> io::Result<()> {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match id.split_once('/') {
        Some((owner, name)) if valid(owner) && valid(name) => Ok(()),
        _ => Err(invalid(format!("repo id {id:?} is not owner/name"))),
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum TreeEntry<'a> {
    File {
        oid: &'a str,
        size: u64,
        path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        lfs: Option<LfsEntry<'a>>,
    },
    Directory {
        oid: &'a str,
        size: u64,
        path: &'a str,
    },
}

impl TreeEntry<'_> {
    fn path(&self) -> &str {
        match self {
            TreeEntry::File { path, .. } | TreeEntry::Directory { path, .. } => path,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LfsEntry<'a> {
    oid: &'a str,
    size: u64,
    pointer_size: u64,
}

#[derive(Debug, Serialize)]
struct ModelInfo<'a> {
    #[serde(rename = "_id")]
    object_id: &'a str,
    id: &'a str,
    #[serde(rename = "modelId")]
    model_id: &'a str,
    sha: &'a str,
    private: bool,
    /// `false`, or how access is granted.
    gated: serde_json::Value,
    disabled: bool,
    siblings: Vec<Sibling<'a>>,
}

#[derive(Debug, Serialize)]
struct Sibling<'a> {
    rfilename: &'a str,
}

// ---------------------------------------------------------------------------------------------
// Serving.

#[derive(Debug)]
struct Shared {
    repos: HashMap<String, Repo>,
    hub_addr: SocketAddr,
    cdn_addr: SocketAddr,
    knobs: Mutex<Knobs>,
    seen: Mutex<Vec<SeenRequest>>,
    /// CDN URLs handed out, by signature.
    presigned: Mutex<HashMap<String, Presigned>>,
    serial: AtomicU64,
}

/// A CDN URL handed out by a resolve.
#[derive(Debug)]
struct Presigned {
    sha256: String,
    /// The repo path it was resolved for, for [`Knobs::corrupt`].
    path: String,
    bytes: Bytes,
    uses: u32,
}

impl Shared {
    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.knobs.lock().expect("knobs")
    }

    fn is_corrupt(&self, path: &str) -> bool {
        self.knobs().corrupt.as_deref() == Some(path)
    }

    /// A fresh presigned CDN URL for `blob` (an LFS file at `path`).
    fn presign(&self, path: &str, blob: &Blob, lfs: &LfsMeta) -> String {
        let serial = self.serial.fetch_add(1, Relaxed);
        let expires = unix_now() + 3600;
        let sig = sha256_hex(format!("{serial}:{expires}:{}", lfs.sha256).as_bytes());
        let sig = sig[..32].to_owned();
        let url = format!(
            "http://{}/lfs/{}?expires={expires}&sig={sig}",
            self.cdn_addr, lfs.sha256
        );
        let presigned = Presigned {
            sha256: lfs.sha256.clone(),
            path: path.to_owned(),
            bytes: blob.bytes.clone(),
            uses: 0,
        };
        self.presigned
            .lock()
            .expect("presigned")
            .insert(sig, presigned);
        url
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn run(
    hub: std::net::TcpListener,
    cdn: std::net::TcpListener,
    shared: Arc<Shared>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("hub runtime");
    rt.block_on(accept(hub, cdn, shared, stopped));
    rt.shutdown_timeout(Duration::from_millis(100));
}

async fn accept(
    hub: std::net::TcpListener,
    cdn: std::net::TcpListener,
    shared: Arc<Shared>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let hub = tokio::net::TcpListener::from_std(hub).expect("hub listener");
    let cdn = tokio::net::TcpListener::from_std(cdn).expect("cdn listener");
    tokio::pin!(stopped);
    loop {
        let (accepted, listener) = tokio::select! {
            _ = &mut stopped => break,
            a = hub.accept() => (a, Listener::Hub),
            a = cdn.accept() => (a, Listener::Cdn),
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(stream, listener, shared.clone()));
    }
}

async fn serve_conn(stream: tokio::net::TcpStream, listener: Listener, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, listener, &req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// A response being built; the body is dropped for HEAD, its length kept.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

const X_REPO_COMMIT: HeaderName = HeaderName::from_static("x-repo-commit");
const X_LINKED_ETAG: HeaderName = HeaderName::from_static("x-linked-etag");
const X_LINKED_SIZE: HeaderName = HeaderName::from_static("x-linked-size");
const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
const X_ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-error-message");

impl Reply {
    fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    fn json(status: StatusCode, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("json");
        Self::new(status)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.into())
    }

    /// A Hub error: `X-Error-Code` (what the client keys on), `X-Error-Message`, JSON body.
    fn error(status: StatusCode, code: &str, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
            .header(X_ERROR_CODE, code)
            .header(X_ERROR_MESSAGE, message)
    }

    /// Sets `name`; a value that is not a valid header value is replaced by `?`.
    fn header(mut self, name: HeaderName, value: &str) -> Self {
        let value = HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("?"));
        self.headers.insert(name, value);
        self
    }

    fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }

    fn into_response(self, head: bool) -> Response<Full<Bytes>> {
        let length = HeaderValue::from(self.body.len());
        let body = if head { Bytes::new() } else { self.body };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        // Explicit on HEAD too: hyper then sends it as is, not `0`.
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length);
        response
    }
}

fn handle(shared: &Shared, listener: Listener, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    let (kind, reply) = if !head && req.method() != Method::GET {
        (
            RouteKind::Unknown,
            Reply::new(StatusCode::METHOD_NOT_ALLOWED),
        )
    } else {
        match listener {
            Listener::Hub => route(shared, req),
            Listener::Cdn => (RouteKind::Cdn, cdn(shared, req)),
        }
    };
    record(shared, listener, req, kind, &reply);
    reply.into_response(head)
}

fn record(
    shared: &Shared,
    listener: Listener,
    req: &Request<Incoming>,
    kind: RouteKind,
    reply: &Reply,
) {
    let text = |name: HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body_bytes = if req.method() == Method::HEAD {
        0
    } else {
        reply.body.len() as u64
    };
    let seen = SeenRequest {
        listener,
        method: req.method().clone(),
        host: text(header::HOST).unwrap_or_default(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        kind,
        status: reply.status.as_u16(),
        authorization: text(header::AUTHORIZATION),
        body_bytes,
    };
    shared.seen.lock().expect("seen").push(seen);
}

fn route(shared: &Shared, req: &Request<Incoming>) -> (RouteKind, Reply) {
    let path = req.uri().path();
    if path == "/api/agent-harnesses" {
        return (RouteKind::Telemetry, telemetry(shared));
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (kind, id, rest) = match segments.as_slice() {
        ["api", "models", owner, name] => (RouteKind::ModelInfo, [*owner, *name], &[][..]),
        ["api", "models", owner, name, "revision", rest @ ..] if !rest.is_empty() => {
            (RouteKind::ModelInfo, [*owner, *name], rest)
        }
        ["api", "models", owner, name, "tree", rest @ ..] if !rest.is_empty() => {
            (RouteKind::Tree, [*owner, *name], rest)
        }
        [owner, name, "resolve", rest @ ..] if rest.len() >= 2 => {
            (RouteKind::Resolve, [*owner, *name], rest)
        }
        _ => return (RouteKind::Unknown, Reply::new(StatusCode::NOT_FOUND)),
    };
    let (id, token) = (id.join("/"), bearer(req));
    let repo = match open(shared, &id, token) {
        Ok(repo) => repo,
        Err(refusal) => return (kind, refusal.reply(&id, token.is_some())),
    };
    let reply = match kind {
        RouteKind::ModelInfo if rest.is_empty() => model_info(repo, MAIN),
        RouteKind::ModelInfo => model_info(repo, &decode(&rest.join("/"))),
        RouteKind::Tree => tree(shared, repo, req, rest),
        _ => resolve(shared, repo, req, rest),
    };
    (kind, reply)
}

fn telemetry(shared: &Shared) -> Reply {
    match shared.knobs().telemetry {
        Telemetry::NotFound => Reply::error(StatusCode::NOT_FOUND, "NotFound", "Not Found"),
        Telemetry::Empty => Reply::json(
            StatusCode::OK,
            &serde_json::json!({ "standardEnvVars": [], "harnesses": {} }),
        ),
    }
}

/// Why a repo may not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Unknown, or private and the token is not its own.
    NotFound,
    /// Gated and the token is not its own.
    Gated,
}

impl Refusal {
    /// The Hub's answer: 401 without a token, 403 (gated) or 404 (not found) with another.
    fn reply(self, id: &str, had_token: bool) -> Reply {
        match (self, had_token) {
            (Refusal::NotFound, false) => Reply::error(
                StatusCode::UNAUTHORIZED,
                "RepoNotFound",
                "Repository not found",
            ),
            (Refusal::NotFound, true) => Reply::error(
                StatusCode::NOT_FOUND,
                "RepoNotFound",
                "Repository not found",
            ),
            (Refusal::Gated, false) => {
                let message = format!(
                    "Access to model {id} is restricted. You must have access to it and be \
                     authenticated to access it. Please log in."
                );
                Reply::error(StatusCode::UNAUTHORIZED, "GatedRepo", &message)
            }
            (Refusal::Gated, true) => {
                let message = format!(
                    "Access to model {id} is restricted and you are not in the authorized \
                     list. Visit https://huggingface.co/{id} to ask for access."
                );
                Reply::error(StatusCode::FORBIDDEN, "GatedRepo", &message)
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The repo `id`, if it exists and `token` may read it.
fn open<'a>(shared: &'a Shared, id: &str, token: Option<&str>) -> Result<&'a Repo, Refusal> {
    let repo = shared.repos.get(id).ok_or(Refusal::NotFound)?;
    match &repo.access {
        Access::Public => Ok(repo),
        Access::Gated { token: t } | Access::Private { token: t } if token == Some(t) => Ok(repo),
        Access::Gated { .. } => Err(Refusal::Gated),
        Access::Private { .. } => Err(Refusal::NotFound),
    }
}

fn revision_not_found(rev: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "RevisionNotFound",
        &format!("Invalid rev id: {rev}"),
    )
}

fn entry_not_found(repo: &Repo, commit: &str, path: &str) -> Reply {
    let message = format!("Entry Not Found for url: {}/{path}.", repo.id);
    Reply::error(StatusCode::NOT_FOUND, "EntryNotFound", &message).header(X_REPO_COMMIT, commit)
}

fn model_info(repo: &Repo, rev: &str) -> Reply {
    let Some(commit) = repo.revision(rev) else {
        return revision_not_found(rev);
    };
    let gated = match repo.access {
        Access::Gated { .. } => serde_json::json!("manual"),
        _ => serde_json::json!(false),
    };
    let info = ModelInfo {
        object_id: &commit[..24],
        id: &repo.id,
        model_id: &repo.id,
        sha: commit,
        private: matches!(repo.access, Access::Private { .. }),
        gated,
        disabled: false,
        siblings: repo
            .files
            .keys()
            .map(|rfilename| Sibling { rfilename })
            .collect(),
    };
    Reply::json(StatusCode::OK, &info)
}

/// `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=[&cursor=]`.
fn tree(shared: &Shared, repo: &Repo, req: &Request<Incoming>, segments: &[&str]) -> Reply {
    let (commit, rest) = match repo.split_revision(segments, 0) {
        Ok(split) => split,
        Err(rev) => return revision_not_found(&rev),
    };
    let dir = decode(&rest.join("/"));
    let dir = dir.trim_matches('/');
    if !dir.is_empty() && !repo.dirs.contains_key(dir) {
        return entry_not_found(repo, commit, dir);
    }
    let query = query_pairs(req);
    let recursive = query
        .iter()
        .any(|(k, v)| k == "recursive" && matches!(v.as_str(), "true" | "True" | "1"));
    let cursor: usize = query
        .iter()
        .find(|(k, _)| k == "cursor")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let entries = repo.entries(dir, recursive);
    let page_size = shared.knobs().tree_page_size.max(1);
    let end = cursor.saturating_add(page_size).min(entries.len());
    let page = entries.get(cursor..end).unwrap_or_default();
    let reply = Reply::json(StatusCode::OK, &page);
    if end < entries.len() {
        reply.header(header::LINK, &next_link(shared, req, &query, end))
    } else {
        reply
    }
}

fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    let query = req.uri().query().unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The absolute `Link` to the page at `cursor`: the same request with another cursor.
fn next_link(
    shared: &Shared,
    req: &Request<Incoming>,
    query: &[(String, String)],
    cursor: usize,
) -> String {
    let mut next = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in query.iter().filter(|(k, _)| k != "cursor") {
        next.append_pair(k, v);
    }
    next.append_pair("cursor", &cursor.to_string());
    format!(
        "<http://{}{}?{}>; rel=\"next\"",
        shared.hub_addr,
        req.uri().path(),
        next.finish()
    )
}

/// `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: small files here, LFS files by the CDN.
fn resolve(shared: &Shared, repo: &Repo, req: &Request<Incoming>, segments: &[&str]) -> Reply {
    let (commit, rest) = match repo.split_revision(segments, 1) {
        Ok(split) => split,
        Err(rev) => return revision_not_found(&rev),
    };
    let path = decode(&rest.join("/"));
    let Some(blob) = repo.files.get(&path) else {
        return entry_not_found(repo, commit, &path);
    };
    let reply = match &blob.lfs {
        None => {
            let bytes = served(&blob.bytes, shared.is_corrupt(&path));
            ranged(&bytes, req).header(header::ETAG, &blob.etag())
        }
        Some(lfs) => {
            let url = shared.presign(&path, blob, lfs);
            Reply::new(StatusCode::FOUND)
                .header(header::LOCATION, &url)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header(header::ETAG, &blob.etag())
                .header(X_LINKED_ETAG, &blob.etag())
                .header(X_LINKED_SIZE, &blob.size().to_string())
                .body(format!("Found. Redirecting to {url}").into())
        }
    };
    reply.header(X_REPO_COMMIT, commit)
}

/// `GET /lfs/{sha256}?expires=&sig=` on the CDN, with a URL a resolve handed out.
fn cdn(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let Some(sha256) = req.uri().path().strip_prefix("/lfs/") else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let sig = query_pairs(req)
        .into_iter()
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let max_uses = shared.knobs().cdn_url_uses;
    let mut presigned = shared.presigned.lock().expect("presigned");
    let Some(url) = presigned.get_mut(&sig).filter(|p| p.sha256 == sha256) else {
        return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
    };
    url.uses += 1;
    if max_uses.is_some_and(|max| url.uses > max) {
        return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let (bytes, path) = (url.bytes.clone(), url.path.clone());
    drop(presigned);
    let etag = format!("\"{sha256}\"");
    ranged(&served(&bytes, shared.is_corrupt(&path)), req).header(header::ETAG, &etag)
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Reply {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>MODELPULLHUB</RequestId></Error>"
    );
    Reply::new(status)
        .header(header::CONTENT_TYPE, "application/xml")
        .body(xml.into())
}

/// `bytes`, or a copy with its middle byte flipped when `corrupt`.
fn served(bytes: &Bytes, corrupt: bool) -> Bytes {
    if !corrupt || bytes.is_empty() {
        return bytes.clone();
    }
    let mut copy = bytes.to_vec();
    let middle = copy.len() / 2;
    copy[middle] ^= 0xff;
    copy.into()
}

/// A 200 with `bytes`, or the 206 or 416 the request's `Range` asks for.
fn ranged(bytes: &Bytes, req: &Request<Incoming>) -> Reply {
    let size = bytes.len() as u64;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let reply = match range.map_or(Ok(None), |r| parse_range(r, size)) {
        Ok(None) => Reply::new(StatusCode::OK).body(bytes.clone()),
        Ok(Some((first, last))) => Reply::new(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                &format!("bytes {first}-{last}/{size}"),
            )
            .body(bytes.slice(first as usize..=last as usize)),
        Err(Unsatisfiable) => Reply::new(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, &format!("bytes */{size}")),
    };
    reply
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream")
}

/// A `Range` that no byte of the file satisfies.
#[derive(Debug, PartialEq, Eq)]
struct Unsatisfiable;

/// The inclusive byte range a single `bytes=` range asks for; `None` for the whole file
/// (no range, or one this server ignores: malformed or multiple).
fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some((a, b)) = value
        .strip_prefix("bytes=")
        .filter(|spec| !spec.contains(','))
        .and_then(|spec| spec.trim().split_once('-'))
    else {
        return Ok(None);
    };
    let (Ok(first), Ok(last)) = (parse_bound(a), parse_bound(b)) else {
        return Ok(None);
    };
    let last_byte = size.saturating_sub(1);
    let range = match (first, last) {
        (Some(first), Some(last)) if last < first => return Ok(None),
        (Some(first), last) => Some((first, last.map_or(last_byte, |l| l.min(last_byte)))),
        (None, Some(suffix)) => (suffix > 0).then(|| (size.saturating_sub(suffix), last_byte)),
        (None, None) => return Ok(None),
    };
    match range {
        Some((first, last)) if size > 0 && first <= last && first < size => Ok(Some((first, last))),
        _ => Err(Unsatisfiable),
    }
}

fn parse_bound(s: &str) -> Result<Option<u64>, std::num::ParseIntError> {
    let s = s.trim();
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids() {
        assert_eq!(
            git_blob_sha1(b"abc"),
            "f2ba8f84ab5c1bce84a7b441cb1959cfc7093b7f"
        );
        assert_eq!(
            git_blob_sha1(b""),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert_eq!(
            git_blob_sha1(b"Hello, World!"),
            "b45ef6fec89518d314f546fd6c3025367b721684"
        );
    }

    #[test]
    fn lfs_pointers() {
        let pointer = lfs_pointer(b"abc");
        assert_eq!(
            pointer,
            "version https://git-lfs.github.com/spec/v1\n\
             oid sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n\
             size 3\n"
        );
        // The Hub's documented example: a 497764107-byte file has a 134-byte pointer.
        assert_eq!(43 + 76 + "size 497764107\n".len(), 134);
        assert_eq!(pointer.len(), 43 + 76 + "size 3\n".len());
    }

    #[test]
    fn git_trees() {
        let mut ids = BTreeMap::new();
        assert_eq!(
            GitDir::default().oid("", &mut ids),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
        // What `git write-tree` gives for these files; `b c` sorts before the directory `b`.
        let mut root = GitDir::default();
        for (path, content) in [("a", "abc"), ("a.d/y", "x"), ("b c", "z"), ("b/c", "abc")] {
            root.insert(path, git_blob_sha1(content.as_bytes()));
        }
        assert_eq!(
            root.oid("", &mut ids),
            "d44c3f92bda92561c936aeb3ad10835630aeedc1"
        );
        let expected = [
            ("a.d", "4a507927e244b807acb6220ef712c71af38a270b"),
            ("b", "5676252fa5eef17d7bdce074d3e2f389553ee172"),
        ];
        assert_eq!(
            ids,
            expected.map(|(p, id)| (p.to_owned(), id.to_owned())).into()
        );
        // `git commit-tree` with the fixture's author, committer, date and message.
        assert_eq!(
            git_commit("d44c3f92bda92561c936aeb3ad10835630aeedc1", "acme/tiny"),
            "ff907a752392369a90ca63177cb2a5c3842e3993"
        );
    }

    fn repo() -> Repo {
        Repo::prepare(
            HubRepo::new("acme/tiny")
                .file("config.json", "{}")
                .file("a/b/c.txt", "c")
                .lfs_file("a/w.bin", vec![7u8; 100])
                .branch("refs/pr/1"),
        )
        .unwrap()
    }

    #[test]
    fn revisions() {
        let repo = repo();
        assert_eq!(repo.commit.len(), 40);
        assert_eq!(repo.commit, self::repo().commit, "deterministic");
        assert_eq!(repo.revision("main"), Some(repo.commit.as_str()));
        assert_eq!(
            repo.revision(&repo.commit.clone()),
            Some(repo.commit.as_str())
        );
        assert_eq!(repo.revision("nope"), None);
        let encoded = ["refs%2Fpr%2F1", "a", "w.bin"];
        let plain = ["refs", "pr", "1", "a", "w.bin"];
        for segments in [&encoded[..], &plain[..]] {
            let (commit, rest) = repo.split_revision(segments, 1).unwrap();
            assert_eq!((commit, rest), (repo.commit.as_str(), &["a", "w.bin"][..]));
        }
        assert_eq!(
            repo.split_revision(&["nope", "x"], 1),
            Err("nope".to_owned())
        );
    }

    #[test]
    fn tree_entries() {
        let repo = repo();
        let paths = |dir, recursive| -> Vec<String> {
            repo.entries(dir, recursive)
                .iter()
                .map(|e| e.path().to_owned())
                .collect()
        };
        assert_eq!(paths("", false), ["a", "config.json"]);
        assert_eq!(
            paths("", true),
            ["a", "a/b", "a/b/c.txt", "a/w.bin", "config.json"]
        );
        assert_eq!(paths("a", false), ["a/b", "a/w.bin"]);
        let json = serde_json::to_value(repo.entries("a", false)).unwrap();
        assert_eq!(json[0]["type"], "directory");
        assert_eq!(json[1]["type"], "file");
        assert_eq!(json[1]["size"], 100);
        assert_eq!(json[1]["lfs"]["size"], 100);
        let pointer = lfs_pointer(&[7u8; 100]);
        assert_eq!(json[1]["lfs"]["pointerSize"], pointer.len());
        assert_eq!(json[1]["oid"], git_blob_sha1(pointer.as_bytes()));
        assert_eq!(json[1]["lfs"]["oid"], sha256_hex(&[7u8; 100]));
    }

    #[test]
    fn bad_repos_are_refused() {
        assert!(Repo::prepare(HubRepo::new("noslash")).is_err());
        assert!(Repo::prepare(HubRepo::new("a/b").file("../x", "")).is_err());
        assert!(Repo::prepare(HubRepo::new("a/b").file("x", "").file("x", "")).is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-200", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=5-", 100), Ok(Some((5, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-", 0), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=9-5", 100), Ok(None));
        assert_eq!(parse_range("bytes=-5", 0), Err(Unsatisfiable));
    }
}
