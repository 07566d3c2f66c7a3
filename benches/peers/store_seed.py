"""Uploads a data set directory into a model store for the store benchmarks.

usage: store_seed.py s3 ENDPOINT BUCKET PREFIX DIR   (Garage; with CRC64NVME checksums, as S3
                                                      now adds by default; key, secret and
                                                      region from AWS_*; prints a probe as JSON)
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
    """Uploads into an existing bucket (Garage: the harness creates it and the key), with the
    key, secret and region from the environment, then probes what modelpull relies on and
    prints the findings as JSON on stdout."""
    import base64
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=endpoint,
                          config=Config(request_checksum_calculation="when_required",
                                        s3={"addressing_style": "path"}))
    # Single-part PUTs: the ETag is then the md5 and the checksum is of the whole object.
    single = TransferConfig(multipart_threshold=1 << 40)
    sent = os.environ.get("SEED_CHECKSUM", "CRC64NVME")

    def put(item):
        full, rel = item
        extra = {"ChecksumAlgorithm": sent} if sent != "none" else {}
        client.upload_file(full, bucket, f"{prefix}/{rel}", Config=single, ExtraArgs=extra)

    todo = sorted(files(root))
    try:
        put(todo[0])
    except ClientError as e:
        print(f"upload with {sent} refused ({e}); uploading without a checksum", file=sys.stderr)
        sent = "none"
        put(todo[0])
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, todo[1:]))

    # The probe: listing, HEAD with checksums, a ranged GET and the ETag of a small object.
    listed = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                 Prefix=f"{prefix}/"):
        listed += len(page.get("Contents", []))
    head = client.head_object(Bucket=bucket, Key=f"{prefix}/{todo[0][1]}", ChecksumMode="ENABLED")
    headers = head["ResponseMetadata"]["HTTPHeaders"]
    checksums = sorted(h for h in headers if h.startswith("x-amz-checksum-"))
    probe_body = os.urandom(1 << 20)
    probe_key = f"probe/{prefix}.bin"
    extra = {"ChecksumAlgorithm": sent} if sent != "none" else {}
    client.put_object(Bucket=bucket, Key=probe_key, Body=probe_body, **extra)
    etag = client.head_object(Bucket=bucket, Key=probe_key)["ETag"].strip('"')
    got = client.get_object(Bucket=bucket, Key=probe_key, Range="bytes=1000-1999")
    ranged = (got["ResponseMetadata"]["HTTPStatusCode"] == 206
              and got["Body"].read() == probe_body[1000:2000])
    if sent == "CRC64NVME":
        # Whether the value Garage returns is the object's: awscrt computes it here too.
        from awscrt import checksums as crt
        want = base64.b64encode(crt.crc64nvme(probe_body).to_bytes(8, "big")).decode()
        back = client.head_object(Bucket=bucket, Key=probe_key, ChecksumMode="ENABLED")
        value = back["ResponseMetadata"]["HTTPHeaders"].get("x-amz-checksum-crc64nvme")
        if value is not None and value != want:
            print(f"Garage returned crc64nvme {value}, the object's is {want}", file=sys.stderr)
            sys.exit(1)
    client.delete_object(Bucket=bucket, Key=probe_key)
    print(json.dumps({
        "uploaded": len(todo), "listed": listed, "listed_all": listed == len(todo),
        "head": head["ContentLength"] == os.path.getsize(todo[0][0]),
        "range": ranged, "etag_md5": etag == hashlib.md5(probe_body).hexdigest(),
        "sent": sent, "checksums": checksums,
    }))


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
