"""Pulls a data set with KServe's storage initializer (`kserve-storage`), one
`Storage.download(uri, out_dir)` per file, as its storage-initializer container does for an
http(s) storageUri.

usage: kserve_pull.py MANIFEST.json DEST
"""
import json
import logging
import os
import sys

from kserve_storage import Storage


def main() -> None:
    logging.disable(logging.INFO)
    manifest, dest = sys.argv[1], sys.argv[2]
    with open(manifest) as f:
        m = json.load(f)
    for path in m["files"]:
        out_dir = os.path.join(dest, os.path.dirname(path))
        os.makedirs(out_dir, exist_ok=True)
        Storage.download(f"{m['base']}/{path}", out_dir)


if __name__ == "__main__":
    main()
