"""Pulls a model store URI (hf://, s3://, gs://) with KServe's storage initializer
(`kserve-storage`), as its storage-initializer container does, reading the same environment.

usage: kserve_uri.py URI DEST
"""
import logging
import sys

from kserve_storage import Storage


def main() -> None:
    logging.disable(logging.INFO)
    uri, dest = sys.argv[1], sys.argv[2]
    Storage.download(uri, dest)


if __name__ == "__main__":
    main()
