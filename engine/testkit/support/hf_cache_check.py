"""Reads a Hugging Face cache with huggingface_hub, offline, the way libraries read it, and
prints what it found as JSON, for the tests of modelpull's cache layout.

Plan on stdin: {"cache": DIR, "repo": "org/name", "revisions": [REV, ...],
                "probe": {"revision": REV, "filename": PATH}}
HF_HUB_CACHE is set to DIR before huggingface_hub is imported, so the cache is found the way
every other program finds it.

Prints {"snapshots": {REV: {"path": DIR, "files": {PATH: SHA256}}},
        "probe": PATH or null,
        "scan": {"warnings": [...], "incomplete": N,
                 "repos": [{"repo_id", "repo_type", "nb_files", "size_on_disk",
                            "revisions": [{"commit", "refs", "files", "size_on_disk"}]}]}}
"""

import hashlib
import json
import os
import sys

plan = json.load(sys.stdin)
os.environ["HF_HUB_CACHE"] = plan["cache"]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache  # noqa: E402


def files_of(folder):
    """Every file under `folder` (through the snapshot's links), by relative path."""
    out = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


snapshots = {}
for revision in plan["revisions"]:
    path = snapshot_download(plan["repo"], revision=revision, local_files_only=True)
    snapshots[revision] = {"path": path, "files": files_of(path)}

probe = plan["probe"]
found = try_to_load_from_cache(plan["repo"], probe["filename"], revision=probe["revision"])

info = scan_cache_dir()
print(json.dumps({
    "snapshots": snapshots,
    "probe": found if isinstance(found, str) else None,
    "scan": {
        "warnings": [str(w) for w in info.warnings],
        "incomplete": len(info.incomplete_files),
        "repos": [
            {
                "repo_id": repo.repo_id,
                "repo_type": repo.repo_type,
                "nb_files": repo.nb_files,
                "size_on_disk": repo.size_on_disk,
                "revisions": sorted(
                    (
                        {
                            "commit": rev.commit_hash,
                            "refs": sorted(rev.refs),
                            "files": sorted(
                                str(f.file_path.relative_to(rev.snapshot_path)) for f in rev.files
                            ),
                            "size_on_disk": rev.size_on_disk,
                        }
                        for rev in repo.revisions
                    ),
                    key=lambda r: r["commit"],
                ),
            }
            for repo in info.repos
        ],
    },
}))
