output "queue_url" {
  description = "Pass to `upscale sqs --queue-url`."
  value       = aws_sqs_queue.events.id
}

output "dlq_url" {
  description = "Pass to `upscale sqs --dlq-url`."
  value       = aws_sqs_queue.dlq.id
}

output "worker_policy_arn" {
  description = "Attach to the workers' (and the SQS consumer's) IAM role, e.g. via IRSA."
  value       = aws_iam_policy.workers.arn
}
