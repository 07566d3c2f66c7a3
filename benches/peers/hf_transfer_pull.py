"""Pulls a data set with hf_transfer as huggingface_hub drives it: files in parallel
(8 workers, as snapshot_download), each file over 16 connections in 10 MiB chunks.

usage: hf_transfer_pull.py MANIFEST.json DEST
"""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import hf_transfer


def main() -> None:
    manifest, dest = sys.argv[1], sys.argv[2]
    with open(manifest) as f:
        m = json.load(f)

    def one(path: str) -> None:
        out = os.path.join(dest, path)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        hf_transfer.download(
            url=f"{m['base']}/{path}",
            filename=out,
            max_files=16,
            chunk_size=10 * 1024 * 1024,
            parallel_failures=3,
            max_retries=5,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, m["files"]))


if __name__ == "__main__":
    main()
