"""Pulls every object under an S3 prefix with boto3's TransferManager, as a Python user would:
one manager with its default TransferConfig (10 threads, 8 MiB parts; the classic client, so the
result does not depend on whether the CRT is chosen), all downloads submitted at once. Endpoint,
key and region come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID…).

usage: boto3_pull.py s3://BUCKET/PREFIX DEST
"""
import os
import sys

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config


def main() -> None:
    uri, dest = sys.argv[1], sys.argv[2]
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/"
    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    config = TransferConfig(preferred_transfer_client="classic")
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    if not keys:
        sys.exit(f"nothing under {uri}")
    with create_transfer_manager(client, config) as manager:
        futures = []
        for key in keys:
            out = os.path.join(dest, key[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            futures.append(manager.download(bucket, key, out))
        for f in futures:
            f.result()


if __name__ == "__main__":
    main()
