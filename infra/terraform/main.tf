data "aws_caller_identity" "current" {}

data "aws_s3_bucket" "source" {
  bucket = var.source_bucket
}

data "aws_s3_bucket" "destination" {
  bucket = var.destination_bucket
}

# --- queue + dead-letter queue -----------------------------------------------------------
resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-events-dlq"
  message_retention_seconds = 1209600
}

resource "aws_sqs_queue" "events" {
  name                       = "${var.name}-events"
  visibility_timeout_seconds = 120
  receive_wait_time_seconds  = 20 # long polling
  message_retention_seconds  = 1209600
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = 5
  })
}

# Only the source bucket, in this account, may send (S3 directly, or EventBridge's rule).
data "aws_iam_policy_document" "queue" {
  statement {
    sid = "S3OrEventBridgeSend"
    # SendMessage: the bucket notification (or the EventBridge rule) delivers object-created
    # events; nothing else may write to the queue.
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events.arn]
    principals {
      type        = "Service"
      identifiers = var.use_eventbridge ? ["events.amazonaws.com"] : ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = var.use_eventbridge ? [aws_cloudwatch_event_rule.created[0].arn] : [data.aws_s3_bucket.source.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy    = data.aws_iam_policy_document.queue.json
}

# --- direct S3 -> SQS notification ---------------------------------------------------------
resource "aws_s3_bucket_notification" "direct" {
  count  = var.use_eventbridge ? 0 : 1
  bucket = data.aws_s3_bucket.source.id

  dynamic "queue" {
    for_each = var.suffixes
    content {
      queue_arn     = aws_sqs_queue.events.arn
      events        = ["s3:ObjectCreated:*"]
      filter_prefix = var.source_prefix
      filter_suffix = queue.value
    }
  }
  depends_on = [aws_sqs_queue_policy.events]
}

# --- optional: S3 -> EventBridge -> SQS ----------------------------------------------------
resource "aws_s3_bucket_notification" "eventbridge" {
  count       = var.use_eventbridge ? 1 : 0
  bucket      = data.aws_s3_bucket.source.id
  eventbridge = true
}

resource "aws_cloudwatch_event_rule" "created" {
  count = var.use_eventbridge ? 1 : 0
  name  = "${var.name}-object-created"
  event_pattern = jsonencode({
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail = {
      bucket = { name = [var.source_bucket] }
      object = { key = [{ prefix = var.source_prefix }] }
    }
  })
}

# EventBridge dead-letters an event it could not deliver into the DLQ only if the DLQ's own
# policy lets the rule send (the consumer's identity policy covers its own sends).
data "aws_iam_policy_document" "dlq" {
  count = var.use_eventbridge ? 1 : 0
  statement {
    sid = "EventBridgeDeadLetter"
    # SendMessage: undeliverable events from our rule only.
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.created[0].arn]
    }
  }
}

resource "aws_sqs_queue_policy" "dlq" {
  count     = var.use_eventbridge ? 1 : 0
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.dlq[0].json
}

resource "aws_cloudwatch_event_target" "queue" {
  count = var.use_eventbridge ? 1 : 0
  rule  = aws_cloudwatch_event_rule.created[0].name
  arn   = aws_sqs_queue.events.arn
  dead_letter_config {
    arn = aws_sqs_queue.dlq.arn
  }
}

# --- IAM: one role per component, assumed through IRSA -------------------------------------
# Workers touch only S3; the SQS consumer touches only SQS. Each role trusts exactly one
# Kubernetes service account (infra/k8s/serviceaccount.yaml) through the cluster's OIDC provider.

locals {
  oidc_issuer = trimprefix(var.oidc_provider_url, "https://")
  staging_arn = "${data.aws_s3_bucket.destination.arn}/.upscale-staging/*"
  service_accounts = {
    worker   = var.worker_service_account
    consumer = var.consumer_service_account
  }
}

data "aws_iam_policy_document" "irsa_trust" {
  for_each = local.service_accounts
  statement {
    sid     = "IRSA"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    # Only this service account in this namespace, and only tokens minted for STS.
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.k8s_namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

# --- worker: S3 only ------------------------------------------------------------------------
data "aws_iam_policy_document" "worker" {
  statement {
    sid = "ReadSources"
    actions = [
      # GetObject: HEAD (size, ETag, our metadata for the recursion guard) and GET of a source.
      # In `url` image mode the upstream fetches a presigned GET signed with these credentials,
      # so the same permission covers it.
      "s3:GetObject",
      # GetObjectVersion: jobs carry the event's version id and read exactly that version.
      "s3:GetObjectVersion",
    ]
    resources = ["${data.aws_s3_bucket.source.arn}/${var.source_prefix}*"]
  }

  statement {
    sid = "ListSources"
    # ListBucket on the source: `upscale backfill` lists the prefix one page at a time, and with
    # it a missing source answers 404 (SourceMissing) instead of 403 (both fail the job at once,
    # without a call). Limited to the source prefix when one is set (a prefix condition on an
    # empty prefix would deny listing the whole bucket).
    actions   = ["s3:ListBucket"]
    resources = [data.aws_s3_bucket.source.arn]
    dynamic "condition" {
      for_each = var.source_prefix == "" ? [] : [var.source_prefix]
      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${condition.value}*"]
      }
    }
  }

  statement {
    sid = "DestinationKeyExistence"
    # ListBucket on the destination: every new job first HEADs its output key (idempotency: an
    # output that already carries this job's id ends the job `skipped`, no call). For a key that
    # does not exist yet S3 answers 404 only to callers allowed to list the bucket; without this
    # it answers 403 and every new job fails as DestinationAccessDenied. No s3:prefix condition:
    # the HEAD is not a list request and carries no prefix, so a conditioned grant would not
    # apply. Also lets the readiness probe HEAD the bucket (UPSCALE_HEALTH_BUCKET).
    actions   = ["s3:ListBucket"]
    resources = [data.aws_s3_bucket.destination.arn]
  }

  statement {
    sid = "WriteOutputs"
    actions = [
      # PutObject: single-part outputs, and CreateMultipartUpload / UploadPart /
      # CompleteMultipartUpload for results streamed in parts (S3 authorizes them as PutObject).
      "s3:PutObject",
      # GetObject: the idempotency HEAD of the output reads its upscale-job-id metadata.
      "s3:GetObject",
      # AbortMultipartUpload: a failed streamed upload is aborted so no orphan parts are stored.
      "s3:AbortMultipartUpload",
      # No DeleteObject: outputs are never deleted.
    ]
    resources = ["${data.aws_s3_bucket.destination.arn}/${var.destination_prefix}*"]
  }

  statement {
    sid = "StageConvertedInputs"
    # Inputs converted to PNG or re-encoded to fit the upstream's cap are staged under
    # .upscale-staging/ in the destination bucket for the upstream to fetch, then removed.
    actions = [
      "s3:PutObject",    # the staged copy
      "s3:GetObject",    # the presigned GET the upstream fetches is signed with this role
      "s3:DeleteObject", # removed after the call: the only prefix the workers may delete under
    ]
    resources = [local.staging_arn]
  }

  dynamic "statement" {
    for_each = length(var.kms_key_arns) > 0 ? [var.kms_key_arns] : []
    content {
      sid = "SseKmsBuckets"
      actions = [
        "kms:Decrypt",         # read SSE-KMS sources; complete multipart uploads to SSE-KMS buckets
        "kms:GenerateDataKey", # write SSE-KMS outputs and staged inputs
      ]
      resources = statement.value
    }
  }
}

resource "aws_iam_policy" "worker" {
  name   = "${var.name}-worker"
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role" "worker" {
  name               = "${var.name}-worker"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust["worker"].json
}

resource "aws_iam_role_policy_attachment" "worker" {
  role       = aws_iam_role.worker.name
  policy_arn = aws_iam_policy.worker.arn
}

# --- SQS consumer (`upscale sqs`): SQS only --------------------------------------------------
data "aws_iam_policy_document" "consumer" {
  statement {
    sid = "ConsumeEvents"
    actions = [
      # ReceiveMessage: long polling, batches of 10 (its VisibilityTimeout parameter needs
      # nothing more; ChangeMessageVisibility is never called).
      "sqs:ReceiveMessage",
      # DeleteMessage: DeleteMessageBatch, only after the message's jobs are in Redis.
      "sqs:DeleteMessage",
    ]
    resources = [aws_sqs_queue.events.arn]
  }
  statement {
    sid = "DeadLetterMalformed"
    # SendMessage to the DLQ only: a message no parser understands is moved there with its reason.
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }
}

resource "aws_iam_policy" "consumer" {
  name   = "${var.name}-consumer"
  policy = data.aws_iam_policy_document.consumer.json
}

resource "aws_iam_role" "consumer" {
  name               = "${var.name}-consumer"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust["consumer"].json
}

resource "aws_iam_role_policy_attachment" "consumer" {
  role       = aws_iam_role.consumer.name
  policy_arn = aws_iam_policy.consumer.arn
}
