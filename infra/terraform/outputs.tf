output "queue_url" {
  description = "Pass to `upscale sqs --queue-url`."
  value       = aws_sqs_queue.events.id
}

output "dlq_url" {
  description = "Pass to `upscale sqs --dlq-url`."
  value       = aws_sqs_queue.dlq.id
}

output "worker_role_arn" {
  description = "eks.amazonaws.com/role-arn of the upscale-worker service account."
  value       = aws_iam_role.worker.arn
}

output "consumer_role_arn" {
  description = "eks.amazonaws.com/role-arn of the upscale-sqs service account."
  value       = aws_iam_role.consumer.arn
}

output "worker_policy_arn" {
  description = "The workers' S3 policy (attach it to another principal to run workers elsewhere)."
  value       = aws_iam_policy.worker.arn
}

output "consumer_policy_arn" {
  description = "The SQS consumer's policy."
  value       = aws_iam_policy.consumer.arn
}
