"""Fills a moto S3 server with boto3, the client people use, from a JSON plan on stdin.

Plan: {"endpoint": URL, "auth": bool, "bucket": NAME,
       "objects": [{"key": K, "file": PATH, "checksum": "CRC64NVME"|..., "multipart": bool,
                    "acl": "public-read",
                    "wrong_checksum": {"algorithm": "CRC32C", "value": BASE64}}],
       "many": {"prefix": P, "count": N}}
With "auth", an IAM role and user with full S3 access are created first (moto checks
signatures after the server's first five requests) and the user's key and the role's ARN are
printed as JSON;
with "sts", a session of the role (temporary key and token) too. "verify": false for a TLS server with a
certificate boto3 does not trust.
"""

import json
import sys

import boto3
from botocore.config import Config

plan = json.load(sys.stdin)
endpoint = plan["endpoint"]
key = {"AccessKeyId": "testing", "SecretAccessKey": "testing"}
if plan.get("auth"):
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    allow = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"],
                            "Resource": "*"}]}
    trust = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                            "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="puller-role",
                           AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    iam.put_role_policy(RoleName="puller-role", PolicyName="s3", PolicyDocument=json.dumps(allow))
    iam.create_user(UserName="puller")
    iam.put_user_policy(UserName="puller", PolicyName="s3", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="puller")["AccessKey"]

verify = plan.get("verify", True)
# Checksums only where the plan asks for them (boto3 would add crc32 everywhere).
config = Config(request_checksum_calculation="when_required",
                s3={"addressing_style": "path"})
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config,
                  verify=verify, aws_access_key_id=key["AccessKeyId"],
                  aws_secret_access_key=key["SecretAccessKey"])
bucket = plan["bucket"]
s3.create_bucket(Bucket=bucket)

PART = 5 * 1024 * 1024
for obj in plan.get("objects", []):
    body = open(obj["file"], "rb").read() if "file" in obj else obj.get("text", "").encode()
    extra = {}
    if obj.get("checksum"):
        extra["ChecksumAlgorithm"] = obj["checksum"]
    if obj.get("acl"):
        extra["ACL"] = obj["acl"]
    if obj.get("wrong_checksum"):
        wrong = obj["wrong_checksum"]
        extra["ChecksumAlgorithm"] = wrong["algorithm"]
        extra["Checksum" + wrong["algorithm"]] = wrong["value"]
    if obj.get("multipart"):
        mp = s3.create_multipart_upload(Bucket=bucket, Key=obj["key"], **extra)
        parts = []
        for i, start in enumerate(range(0, len(body), PART), start=1):
            args = {}
            if obj.get("checksum"):
                args["ChecksumAlgorithm"] = obj["checksum"]
            r = s3.upload_part(Bucket=bucket, Key=obj["key"], UploadId=mp["UploadId"],
                               PartNumber=i, Body=body[start:start + PART], **args)
            part = {"ETag": r["ETag"], "PartNumber": i}
            for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME",
                         "ChecksumSHA256", "ChecksumSHA1"):
                if name in r:
                    part[name] = r[name]
            parts.append(part)
        s3.complete_multipart_upload(Bucket=bucket, Key=obj["key"], UploadId=mp["UploadId"],
                                     MultipartUpload={"Parts": parts})
    else:
        s3.put_object(Bucket=bucket, Key=obj["key"], Body=body, **extra)

many = plan.get("many")
if many:
    for i in range(many["count"]):
        s3.put_object(Bucket=bucket, Key=f"{many['prefix']}{i:05d}.txt", Body=f"{i}\n".encode())

out = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
if plan.get("auth"):
    out["role_arn"] = role["Arn"]
if plan.get("sts"):
    sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1", verify=verify,
                       aws_access_key_id=key["AccessKeyId"],
                       aws_secret_access_key=key["SecretAccessKey"])
    session = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="puller-session")["Credentials"]
    out["session"] = {"access_key_id": session["AccessKeyId"],
                      "secret_access_key": session["SecretAccessKey"],
                      "session_token": session["SessionToken"]}
print(json.dumps(out))
