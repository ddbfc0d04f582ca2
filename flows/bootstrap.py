"""The `distributed-bootstrap` flow: once per AWS account, the roles, the instance profile and the
bucket-policy statements the AWS backends need; with `destroy`, their removal.

Deployed as `distributed/bootstrap`. Its markdown artifact `bootstrap` gives the ARNs and the
fleet-file fields to paste.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from prefect_distributed.core import bootstrap as core_bootstrap
from prefect_distributed.core.bootstrap import DEFAULT_PREFIX, BootstrapNames, BootstrapResult, DestroyResult
from prefect_distributed.tasks._aws import aws_clients
from prefect_distributed.tasks.validate import ConfigParameter, resolve_config


def _bootstrap_markdown(result: BootstrapResult) -> str:
    return "\n".join(
        [
            "# Account bootstrap",
            "",
            "| what | ARN |",
            "|---|---|",
            f"| instance profile (fleet file: LaunchSpecifications[0].IamInstanceProfile.Arn) | "
            f"`{result.instance_profile_arn}` |",
            f"| Spot Fleet role (fleet file: IamFleetRole) | `{result.fleet_role_arn}` |",
            f"| task role (config: fleet.task_role_arn) | `{result.task_role_arn}` |",
            f"| task execution role (fargate config: fleet.execution_role_arn) | `{result.execution_role_arn}` |",
            "",
            "```",
            result.snippets().rstrip(),
            "```",
            "",
            f"Created: {', '.join(result.created) or 'nothing'}.",
            "",
            f"Put right: {', '.join(result.updated) or 'nothing'}.",
            "",
            f"Already in place: {', '.join(result.unchanged) or 'nothing'}.",
        ]
    )


def _destroy_markdown(result: DestroyResult) -> str:
    lines = ["# Account bootstrap removed", "", f"Deleted: {', '.join(result.deleted) or 'nothing'}."]
    if result.kept:
        lines += ["", f"Left alone (not made by the bootstrap): {', '.join(result.kept)}."]
    return "\n".join(lines)


@flow(
    name="distributed-bootstrap",
    description="Once per AWS account: the IAM roles, instance profile and bucket policy the AWS backends "
    "need (destroy=true removes them).",
)
def bootstrap_account(
    config: ConfigParameter, destroy: bool = False, name_prefix: str = DEFAULT_PREFIX
) -> BootstrapResult | DestroyResult:
    """Make what the AWS backends (spot-fleet, fargate, ec2-spot) need in the account, or remove it.

    Args:
        config: A YAML config file path, the name of a saved 'Distributed Config' block, or the
            settings themselves as a mapping. Its region, buckets and credentials are used.
        destroy: Remove what the bootstrap made (found by its tag), nothing else.
        name_prefix: Prefix of the role and instance profile names; another prefix makes a second,
            independent set in the same account.
    """
    logger = get_run_logger()
    run_config = resolve_config(config)
    clients = aws_clients(run_config)
    names = BootstrapNames(prefix=name_prefix)
    if destroy:
        removed = core_bootstrap.destroy(clients, run_config, names=names)
        logger.info("Bootstrap removed: %s", ", ".join(removed.deleted) or "nothing was there")
        for kept in removed.kept:
            logger.warning("Left alone: %s", kept)
        create_markdown_artifact(key="bootstrap", markdown=_destroy_markdown(removed))
        return removed
    result = core_bootstrap.bootstrap(clients, run_config, names=names)
    logger.info(
        "Bootstrap of account done: %d created, %d put right, %d already in place",
        len(result.created),
        len(result.updated),
        len(result.unchanged),
    )
    logger.info("Paste into the fleet file and the config:\n%s", result.snippets())
    create_markdown_artifact(key="bootstrap", markdown=_bootstrap_markdown(result))
    return result

