"""STS: whose credentials these are (the account and its partition, for building ARNs)."""

from __future__ import annotations

from botocore.client import BaseClient
from pydantic import BaseModel, ConfigDict, Field


class Identity(BaseModel):
    """The account the credentials belong to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account: str = Field(description="12-digit account id.")
    partition: str = Field(description="ARN partition: 'aws', 'aws-cn' or 'aws-us-gov'.")


def caller_identity(sts: BaseClient) -> Identity:
    """GetCallerIdentity needs no permission, so it works with any valid credentials."""
    answer = sts.get_caller_identity()
    return Identity(account=answer["Account"], partition=answer["Arn"].split(":")[1])
