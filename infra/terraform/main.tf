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
    sid       = "S3OrEventBridgeSend"
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

resource "aws_cloudwatch_event_target" "queue" {
  count = var.use_eventbridge ? 1 : 0
  rule  = aws_cloudwatch_event_rule.created[0].name
  arn   = aws_sqs_queue.events.arn
  dead_letter_config {
    arn = aws_sqs_queue.dlq.arn
  }
}

# --- least-privilege policy for workers and the SQS consumer -------------------------------
data "aws_iam_policy_document" "workers" {
  statement {
    sid       = "ReadSources"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${data.aws_s3_bucket.source.arn}/${var.source_prefix}*"]
  }
  statement {
    sid       = "ListSourcesForBackfill"
    actions   = ["s3:ListBucket"]
    resources = [data.aws_s3_bucket.source.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.source_prefix}*"]
    }
  }
  statement {
    sid = "WriteOutputs"
    # GetObject: the idempotency check reads our own output's metadata (HEAD).
    actions   = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:DeleteObject"]
    resources = ["${data.aws_s3_bucket.destination.arn}/${var.destination_prefix}*", "${data.aws_s3_bucket.destination.arn}/.upscale-staging/*"]
  }
  statement {
    sid       = "ConsumeEvents"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.events.arn]
  }
  statement {
    sid       = "DeadLetter"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }
}

resource "aws_iam_policy" "workers" {
  name   = "${var.name}-workers"
  policy = data.aws_iam_policy_document.workers.json
}
