"""Offline validation of EC2 request parameters with botocore's published service model."""

from __future__ import annotations

import botocore.session
from botocore.validate import ParamValidator


def ec2_problems(
    params: dict[str, object], operation: str = "AuthorizeSecurityGroupIngress"
) -> str:
    """botocore's report for `params` as input of `operation` ('' when valid)."""
    model = botocore.session.get_session().get_service_model("ec2")
    shape = model.operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    return report.generate_report() if report.has_errors() else ""
