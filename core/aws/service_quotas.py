"""Service Quotas: the account's Spot vCPU quota, which caps how many machines a fleet gets, and
Fargate's vCPU quotas, which cap how many ECS tasks run at once."""

from __future__ import annotations

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from prefect_distributed.core.aws.clients import error_code

# "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", counted in vCPUs.
SPOT_VCPU_QUOTA_CODE = "L-34B43A08"
# "Fargate Spot vCPU resource count" and "Fargate On-Demand vCPU resource count", service code fargate.
FARGATE_SPOT_VCPU_QUOTA_CODE = "L-36FBB829"
FARGATE_VCPU_QUOTA_CODE = "L-3032A538"
# The quota cannot be read here (not published in the region, or no servicequotas:GetServiceQuota).
UNKNOWN_QUOTA_CODES = frozenset({"NoSuchResourceException", "AccessDeniedException", "AccessDenied"})


def spot_vcpu_quota(quotas: BaseClient) -> float | None:
    """The applied Spot vCPU quota, or None when it cannot be read."""
    return applied_quota(quotas, "ec2", SPOT_VCPU_QUOTA_CODE)


def applied_quota(quotas: BaseClient, service_code: str, quota_code: str) -> float | None:
    """A quota's applied value, or None when it cannot be read."""
    try:
        answer = quotas.get_service_quota(ServiceCode=service_code, QuotaCode=quota_code)
    except ClientError as exc:
        if error_code(exc) in UNKNOWN_QUOTA_CODES:
            return None
        raise
    return float(answer["Quota"]["Value"])
