"""The errors a run can raise, each saying what is wrong and how to fix it."""

from __future__ import annotations


class DistributedError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DistributedError):
    """The configuration or the job file is wrong. Raised before any AWS resource exists."""


class FleetError(DistributedError):
    """The fleet could not be started, or was lost while jobs remained."""


class AwsOperationError(DistributedError):
    """An AWS call failed in a way that retrying will not fix (partial failures included)."""


class BudgetExceededError(DistributedError):
    """The run's machines cost fleet.budget_usd; the run was stopped."""
