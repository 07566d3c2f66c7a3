//! `hf://org/model[:revision]`: a model repository on the Hugging Face Hub.
//!
//! The revision (a branch, tag or commit; `main` by default) is first pinned to its commit,
//! so every file comes from the same snapshot even if the branch moves during the pull. The
//! tree API (`/api/models/{repo}/tree/{commit}?recursive=true`, pages linked by `Link:
//! rel="next"`) lists every file with its size and id: LFS files carry their sha256
//! (`lfs.oid`), other files their git blob sha1 (`oid`); both are verified. Bytes come from
//! `/{repo}/resolve/{commit}/{path}`, which redirects LFS files to a CDN with a presigned
//! URL; the engine follows it, drops the token on the way, and goes back to the resolve URL
//! when the presigned URL expires mid-pull. `HF_ENDPOINT` (default `https://huggingface.co`)
//! and `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`) as in `huggingface_hub`.

use serde::Deserialize;
use url::Url;

use super::control::{self, Control, Reply};
use super::env::Env;
use super::filter::Patterns;
use super::{Manifest, encode};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::http::Client;
use crate::target::{Auth, StaticHeaders, Target};

const PUBLIC: &str = "https://huggingface.co";
use super::MAX_PAGES;

/// A parsed `hf://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// `org/model`.
    pub id: String,
    pub revision: String,
}

impl Repo {
    pub fn parse(uri: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSource {
            input: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("hf://")
            .ok_or_else(|| invalid("not an hf:// URI".into()))?;
        let (id, revision) = match rest.split_once(':') {
            Some((id, rev)) => (id, rev),
            None => (rest, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let valid_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() != 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err(invalid(
                "expected hf://<owner>/<model>[:<revision>] (letters, digits, `-`, `_`, `.`)"
                    .into(),
            ));
        }
        if revision.is_empty()
            || revision.contains(['\0', '\\'])
            || revision.split('/').any(|s| s == "..")
        {
            return Err(invalid(format!("`{revision}` is not a valid revision")));
        }
        Ok(Self {
            id: id.to_owned(),
            revision: revision.to_owned(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct RevisionInfo {
    sha: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Entry {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) size: u64,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

/// The Hub's endpoint from `HF_ENDPOINT`.
fn endpoint(env: &Env) -> Result<Url> {
    let raw = env
        .get("HF_ENDPOINT")
        .unwrap_or(PUBLIC)
        .trim_end_matches('/');
    let url = Url::parse(raw)
        .map_err(|e| Error::InvalidOption(format!("HF_ENDPOINT `{raw}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::InvalidOption(format!(
            "HF_ENDPOINT `{raw}` must be an http(s) URL"
        )));
    }
    Ok(url)
}

fn join(base: &Url, path: &str) -> Result<Url> {
    Url::parse(&format!("{}{path}", base.as_str().trim_end_matches('/')))
        .map_err(|e| Error::InvalidOption(format!("cannot build a Hub URL: {e}")))
}

pub fn list(uri: &str, env: &Env, control: &Control, patterns: &Patterns) -> Result<Manifest> {
    let repo = Repo::parse(uri)?;
    let base = endpoint(env)?;
    let auth = match env.first(&["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]) {
        Some(token) => Auth::new(StaticHeaders(vec![(
            "Authorization".into(),
            format!("Bearer {}", token.trim()),
        )])),
        None => Auth::default(),
    };
    let (commit, entries) = control.run(|client| {
        let (repo, base, auth) = (repo.clone(), base.clone(), auth.clone());
        let uri = uri.to_owned();
        async move {
            let hub = Hub {
                uri: &uri,
                repo: &repo,
                base: &base,
                auth: &auth,
            };
            let commit = hub.commit(&client).await?;
            let entries = hub.tree(&client, &commit).await?;
            Ok::<_, Error>((commit, entries))
        }
    })??;

    let mut files = Vec::new();
    let mut skipped = 0;
    for e in entries {
        if e.kind != "file" {
            continue;
        }
        if !patterns.keeps_folders(&e.path) {
            skipped += 1;
            continue;
        }
        let bad = |what: &str| Error::Store {
            uri: uri.to_owned(),
            message: format!("tree entry `{}` has {what}", e.path.escape_debug()),
        };
        let (expected, size, checksum) = match (&e.lfs, &e.oid) {
            (Some(lfs), _) => (
                Digest::from_hex(Algorithm::Sha256, &lfs.oid)
                    .map_err(|_| bad("an invalid lfs.oid"))?,
                lfs.size,
                "sha256 (lfs.oid)",
            ),
            (None, Some(oid)) => (
                Digest::from_hex(Algorithm::GitSha1, oid).map_err(|_| bad("an invalid oid"))?,
                e.size,
                "git blob sha1 (oid)",
            ),
            (None, None) => return Err(bad("no oid")),
        };
        let url = join(
            &base,
            &format!("/{}/resolve/{}/{}", repo.id, commit, encode(&e.path, true)),
        )?;
        files.push(Target {
            url,
            path: e.path,
            expected: vec![expected],
            size: Some(size),
            checksum: Some(checksum.into()),
            auth: auth.clone(),
            mirrors: Vec::new(),
        });
    }
    Ok(Manifest {
        uri: uri.to_owned(),
        store: "hf",
        revision: Some(commit),
        files,
        skipped,
        ca_bundle: None,
        insecure_hosts: Vec::new(),
    })
}

struct Hub<'a> {
    uri: &'a str,
    repo: &'a Repo,
    base: &'a Url,
    auth: &'a Auth,
}

impl Hub<'_> {
    async fn get(&self, client: &Client, url: &Url) -> Result<Reply> {
        let reply = control::get_authorized(client, self.uri, url, self.auth, "the Hub").await?;
        if (200..300).contains(&reply.status()) {
            return Ok(reply);
        }
        Err(self.failure(&reply))
    }

    fn failure(&self, reply: &Reply) -> Error {
        let code = reply.header("x-error-code").unwrap_or_default();
        let detail = reply
            .header("x-error-message")
            .map(str::to_owned)
            .unwrap_or_else(|| reply.snippet());
        let uri = self.uri.to_owned();
        let id = &self.repo.id;
        let has_token = self.auth.0.is_some();
        match (reply.status(), code) {
            (_, "GatedRepo") => Error::Auth {
                uri,
                message: format!(
                    "{id} is a gated repository: {}",
                    if has_token {
                        "the token's account has not been granted access; accept the model's conditions on the Hub with that account"
                    } else {
                        "accept its conditions on the Hub and set HF_TOKEN to a token of that account"
                    }
                ),
            },
            (_, "RevisionNotFound") => Error::Store {
                uri,
                message: format!("revision `{}` does not exist in {id}", self.repo.revision),
            },
            (401 | 403 | 404, "RepoNotFound") | (401 | 403, _) => Error::Auth {
                uri,
                message: format!(
                    "{id} was not found or is private{}",
                    if has_token {
                        " (the token in HF_TOKEN has no access to it)"
                    } else {
                        "; if it is private, set HF_TOKEN"
                    }
                ),
            },
            (404, _) => Error::Store {
                uri,
                message: format!("{id} or revision `{}` was not found", self.repo.revision),
            },
            (status, _) => Error::Store {
                uri,
                message: format!("the Hub answered HTTP {status}: {detail}"),
            },
        }
    }

    /// The commit the revision points at now.
    async fn commit(&self, client: &Client) -> Result<String> {
        if self.repo.revision.len() == 40
            && self.repo.revision.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Ok(self.repo.revision.to_ascii_lowercase());
        }
        let url = join(
            self.base,
            &format!(
                "/api/models/{}/revision/{}",
                self.repo.id,
                encode(&self.repo.revision, false)
            ),
        )?;
        let reply = self.get(client, &url).await?;
        let info: RevisionInfo = serde_json::from_slice(&reply.body).map_err(|e| Error::Store {
            uri: self.uri.to_owned(),
            message: format!("the Hub's revision answer is not valid JSON: {e}"),
        })?;
        if info.sha.len() != 40 || !info.sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Store {
                uri: self.uri.to_owned(),
                message: format!(
                    "the Hub gave `{}` as the commit, which is not a commit id",
                    info.sha.escape_debug()
                ),
            });
        }
        Ok(info.sha.to_ascii_lowercase())
    }

    /// Every entry of the tree at `commit`, following the pages.
    async fn tree(&self, client: &Client, commit: &str) -> Result<Vec<Entry>> {
        let mut url = join(
            self.base,
            &format!(
                "/api/models/{}/tree/{commit}?recursive=true&expand=false",
                self.repo.id
            ),
        )?;
        let mut entries = Vec::new();
        for _ in 0..MAX_PAGES {
            let reply = self.get(client, &url).await?;
            let page = parse_tree_page(&reply.body).map_err(|message| Error::Store {
                uri: self.uri.to_owned(),
                message,
            })?;
            entries.extend(page);
            match reply.header("link").and_then(next_link) {
                None => return Ok(entries),
                Some(next) => {
                    let next = url.join(&next).map_err(|e| Error::Store {
                        uri: self.uri.to_owned(),
                        message: format!("the tree listing's next link is invalid: {e}"),
                    })?;
                    // The token goes with every page: the next page must be on the Hub.
                    if next.origin() != self.base.origin() {
                        return Err(Error::Store {
                            uri: self.uri.to_owned(),
                            message: format!(
                                "the tree listing links to another host ({}); refusing to follow",
                                crate::redact(&next)
                            ),
                        });
                    }
                    url = next;
                }
            }
        }
        Err(Error::Store {
            uri: self.uri.to_owned(),
            message: format!("the tree listing has more than {MAX_PAGES} pages"),
        })
    }
}

/// One page of the tree API's answer.
pub(crate) fn parse_tree_page(body: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("the Hub's tree listing is not valid JSON: {e}"))
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            Repo::parse("hf://meta-llama/Llama-3.1-8B").unwrap(),
            Repo {
                id: "meta-llama/Llama-3.1-8B".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            Repo::parse("hf://o/m:refs/pr/1").unwrap().revision,
            "refs/pr/1"
        );
        for bad in [
            "hf://m",
            "hf://a/b/c",
            "hf://../x",
            "hf://a/b:",
            "hf://a/b c",
            "hf://a/b:../x",
        ] {
            assert!(Repo::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"<https://hub/api/models/a/b/tree/x?cursor=abc>; rel="next""#).as_deref(),
            Some("https://hub/api/models/a/b/tree/x?cursor=abc")
        );
        assert_eq!(
            next_link(r#"<https://x>; rel="prev", <https://y>; rel=next"#).as_deref(),
            Some("https://y")
        );
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn tree_entries() {
        let page: Vec<Entry> = serde_json::from_str(
            r#"[{"type":"directory","oid":"x","size":0,"path":"sub"},
                {"type":"file","oid":"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391","size":0,"path":"empty"},
                {"type":"file","oid":"a","size":135,"path":"w.safetensors","lfs":{"oid":"00","size":99,"pointerSize":135}}]"#,
        )
        .unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(page[2].lfs.as_ref().unwrap().size, 99);
    }
}
