"""The rows of a preflight report: each check's finding (ok, warning or problem) with its fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from botocore.client import BaseClient
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.aws import iam as iam_api
from prefect_distributed.core.aws.clients import error_code
from prefect_distributed.core.aws.sts import Identity
from prefect_distributed.core.errors import ConfigError

Status = Literal["ok", "warning", "problem"]
BOOTSTRAP = "run the bootstrap (prefect deployment run distributed/bootstrap -p config=...)"
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


class CheckRow(BaseModel):
    """One line of the report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: str = Field(description="What was checked, e.g. 'instance profile'.")
    status: Status
    detail: str = Field(description="What was found.")
    fix: str = Field(default="", description="What to do about it; empty when ok.")


class PreflightReport(BaseModel):
    """Every check's rows, in the order they ran."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: list[CheckRow]

    @property
    def problems(self) -> list[CheckRow]:
        return [row for row in self.rows if row.status == "problem"]

    @property
    def warnings(self) -> list[CheckRow]:
        return [row for row in self.rows if row.status == "warning"]

    def raise_for_problems(self) -> None:
        """Raise ConfigError listing every problem with its fix; nothing when there is none."""
        if self.problems:
            raise ConfigError(
                f"Preflight found {len(self.problems)} problem(s); nothing was created:\n"
                + "\n".join(f"  - {row.check}: {row.detail}\n    fix: {row.fix}" for row in self.problems)
            )


def row_ok(check: str, detail: str) -> CheckRow:
    return CheckRow(check=check, status="ok", detail=detail)


def row_problem(check: str, detail: str, fix: str) -> CheckRow:
    return CheckRow(check=check, status="problem", detail=detail, fix=fix)


def row_warning(check: str, detail: str, fix: str) -> CheckRow:
    return CheckRow(check=check, status="warning", detail=detail, fix=fix)


def role_rows(iam: BaseClient, check: str, arn: str, service: str, identity: Identity, fix: str) -> list[CheckRow]:
    """A role ARN: in this account, existing, trusted by `service`."""
    account = iam_api.account_from_arn(arn)
    if account != identity.account:
        return [
            row_problem(
                check,
                f"{arn} is in account {account}; these credentials are account {identity.account}",
                f"use a role of account {identity.account}; {fix}",
            )
        ]
    name = iam_api.name_from_arn(arn)
    role = iam_api.get_role(iam, name)
    if role is None:
        return [row_problem(check, f"{arn}: there is no role {name} in account {account}", fix)]
    trusted = iam_api.trusted_services(role)
    if service not in trusted:
        return [
            row_problem(
                check,
                f"role {name} is not trusted by {service} (trusted by: {', '.join(sorted(trusted)) or 'none'})",
                f"add {service} to the role's trust policy, or {fix}",
            )
        ]
    return [row_ok(check, f"role {name} exists and trusts {service}")]


def guarded(check: str, run: Callable[[], list[CheckRow]]) -> list[CheckRow]:
    """The check's rows, or one warning when these credentials may not make its calls."""
    try:
        return run()
    except ClientError as exc:
        if error_code(exc) not in DENIED_CODES:
            raise
        operation = getattr(exc, "operation_name", "the call")
        return [
            row_warning(
                check,
                f"not checked: these credentials may not call {operation}",
                "grant the read-only calls preflight makes, or check this by hand",
            )
        ]
