"""AWS clients: the service models botocore parses are parsed once per process, not once per session."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.loaders import JSONFileLoader

from prefect_distributed.core.aws.clients import AwsClients


def test_a_new_session_makes_its_clients_without_reading_the_service_models_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read: list[str] = []
    load_file = JSONFileLoader.load_file

    def counting(self: JSONFileLoader, file_path: str, *args: Any, **kwargs: Any) -> Any:
        read.append(file_path)
        return load_file(self, file_path, *args, **kwargs)

    monkeypatch.setattr(JSONFileLoader, "load_file", counting)
    services = ("ec2", "ecs", "sqs", "s3", "logs")

    def clients_of_a_new_session() -> list[str]:
        read.clear()
        clients = AwsClients(boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b"), "us-east-1")
        for service in services:
            clients.client(service)
        return list(read)

    clients_of_a_new_session()  # whatever this process had not read yet
    assert clients_of_a_new_session() == []
    # A session outside AwsClients reads them all again: botocore's own behaviour, which the shared loader avoids.
    plain = boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b")
    read.clear()
    plain.client("ec2", region_name="us-east-1")
    assert any("ec2" in path for path in read)
