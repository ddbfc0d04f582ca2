"""S3: bucket checks and the small JSON records of a run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws.clients import error_code, paginate
from prefect_distributed.core.errors import ConfigError

MISSING_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})


def check_bucket(s3: BaseClient, bucket: str, setting: str) -> None:
    """Raise ConfigError naming the setting when the bucket is missing or not ours to use."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in MISSING_BUCKET_CODES:
            raise ConfigError(f"{setting}: bucket '{bucket}' does not exist; create it or fix the name") from None
        if code in {"403", "AccessDenied"}:
            raise ConfigError(
                f"{setting}: no access to bucket '{bucket}'; check the credentials' S3 permissions"
            ) from None
        raise


def list_keys(s3: BaseClient, bucket: str, prefix: str) -> Iterator[str]:
    for item in paginate(s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix=prefix):
        yield item["Key"]


def put_json(s3: BaseClient, bucket: str, key: str, document: Any) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document, indent=1).encode(), ContentType="application/json")


def get_json(s3: BaseClient, bucket: str, key: str) -> Any | None:
    """The JSON document at the key, or None when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in {"NoSuchKey", "404"}:
            return None
        raise
    return json.loads(body)


def bucket_policy(s3: BaseClient, bucket: str) -> dict[str, Any] | None:
    """The bucket's policy document, or None when it has none."""
    try:
        return json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as exc:
        if error_code(exc) == "NoSuchBucketPolicy":
            return None
        raise


def put_bucket_policy(s3: BaseClient, bucket: str, policy: dict[str, Any]) -> None:
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def delete_bucket_policy(s3: BaseClient, bucket: str) -> None:
    s3.delete_bucket_policy(Bucket=bucket)
