"""Uploads a data set directory into a model store for the store benchmarks.

usage: store_seed.py s3 ENDPOINT BUCKET PREFIX DIR   (moto; with CRC64NVME checksums, as S3 now
                                                      adds by default)
       store_seed.py gs ENDPOINT BUCKET PREFIX DIR   (gcp-storage-emulator, JSON API uploads)
"""
import json
import os
import sys
import urllib.parse
import urllib.request


def files(root):
    for base, _, names in os.walk(root):
        for name in names:
            if name.endswith(".sha256"):
                continue
            full = os.path.join(base, name)
            yield full, os.path.relpath(full, root)


def s3(endpoint, bucket, prefix, root):
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench",
                          config=Config(request_checksum_calculation="when_required"))
    client.create_bucket(Bucket=bucket)
    single = TransferConfig(multipart_threshold=1 << 40)
    for full, rel in files(root):
        client.upload_file(full, bucket, f"{prefix}/{rel}", Config=single,
                           ExtraArgs={"ChecksumAlgorithm": "CRC64NVME"})


def gs(endpoint, bucket, prefix, root):
    def post(url, body, content_type):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req) as r:
            r.read()

    post(f"{endpoint}/storage/v1/b?project=bench", json.dumps({"name": bucket}).encode(),
         "application/json")
    for full, rel in files(root):
        name = urllib.parse.quote(f"{prefix}/{rel}", safe="")
        with open(full, "rb") as f:
            post(f"{endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}",
                 f.read(), "application/octet-stream")


if __name__ == "__main__":
    kind, endpoint, bucket, prefix, root = sys.argv[1:6]
    {"s3": s3, "gs": gs}[kind](endpoint, bucket, prefix, root)
