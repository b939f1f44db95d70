"""The Terraform IAM keeps its least-privilege shape (separate IRSA roles, S3 for workers, SQS
for the consumer), and the Terraform is formatted. Fast, no services needed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.unit.deploy.manifests import ROOT
from worker.contract import STAGING_PREFIX

TERRAFORM = shutil.which("terraform")


def _statements(tf: str) -> dict[str, str]:
    """Terraform `statement { sid = "..." ... }` blocks of main.tf by sid (text, for grepping)."""
    out: dict[str, str] = {}
    for m in re.finditer(r'\bsid\s*=\s*"([^"]+)"', tf):
        start = tf.rfind("statement", 0, m.start())
        end = tf.find("\n  }", m.end())
        out[m[1]] = tf[start:end]
    return out


def test_terraform_iam_is_least_privilege_with_separate_irsa_roles() -> None:
    tf = (ROOT / "infra/terraform/main.tf").read_text()
    st = _statements(tf)
    # The idempotency HEAD of a missing output must answer 404: ListBucket on the destination.
    assert '"s3:ListBucket"' in st["DestinationKeyExistence"]
    assert "data.aws_s3_bucket.destination.arn]" in st["DestinationKeyExistence"]
    # DeleteObject only under the staging prefix.
    deleting = [sid for sid, body in st.items() if 's3:DeleteObject"' in body]
    assert deleting == ["StageConvertedInputs"]
    assert f"/{STAGING_PREFIX}*" in tf and "local.staging_arn" in st["StageConvertedInputs"]
    # Workers: S3 only. Consumer: SQS only.
    worker = tf[tf.index('data "aws_iam_policy_document" "worker"') : tf.index('"consumer" {')]
    consumer = tf[tf.index('data "aws_iam_policy_document" "consumer"') :]
    assert '"sqs:' not in worker and '"s3:' not in consumer.split("resource")[0]
    # IRSA: each role trusts one service account through the OIDC provider.
    assert "sts:AssumeRoleWithWebIdentity" in tf
    assert "system:serviceaccount:${var.k8s_namespace}:${each.value}" in tf
    assert 'irsa_trust["worker"]' in tf and 'irsa_trust["consumer"]' in tf
    # Every action is explained by a comment in (or just above) its statement.
    for sid, body in st.items():
        if sid in ("IRSA",):
            continue
        assert "#" in body, f"statement {sid} has no comment saying why its actions are there"


@pytest.mark.skipif(TERRAFORM is None, reason="terraform not installed")
def test_terraform_is_formatted() -> None:
    r = subprocess.run(
        [str(TERRAFORM), "fmt", "-check", "-recursive", str(ROOT / "infra/terraform")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"terraform fmt would change: {r.stdout}"
