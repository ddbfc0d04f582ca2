"""Service Quotas: the account's Spot vCPU quota, which caps how many machines a fleet gets."""

from __future__ import annotations

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from core.aws.clients import error_code

# "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", counted in vCPUs.
SPOT_VCPU_QUOTA_CODE = "L-34B43A08"
# The quota cannot be read here (not published in the region, or no servicequotas:GetServiceQuota).
UNKNOWN_QUOTA_CODES = frozenset({"NoSuchResourceException", "AccessDeniedException", "AccessDenied"})


def spot_vcpu_quota(quotas: BaseClient) -> float | None:
    """The applied Spot vCPU quota, or None when it cannot be read."""
    try:
        answer = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=SPOT_VCPU_QUOTA_CODE)
    except ClientError as exc:
        if error_code(exc) in UNKNOWN_QUOTA_CODES:
            return None
        raise
    return float(answer["Quota"]["Value"])
