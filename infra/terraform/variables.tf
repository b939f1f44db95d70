variable "source_bucket" {
  description = "Bucket whose uploads are upscaled (must exist)."
  type        = string
}

variable "source_prefix" {
  description = "Only keys under this prefix trigger jobs (\"\" = whole bucket)."
  type        = string
  default     = ""
}

variable "destination_bucket" {
  description = "Bucket the 2x outputs are written to (must exist)."
  type        = string
}

variable "destination_prefix" {
  description = "Prefix the workers may write under (\"\" = whole bucket)."
  type        = string
  default     = ""
}

variable "name" {
  description = "Name prefix for the queue, DLQ and IAM policy."
  type        = string
  default     = "upscale-queue"
}

variable "use_eventbridge" {
  description = "Route S3 events through EventBridge (rule -> SQS) instead of a direct S3 notification."
  type        = bool
  default     = false
}

variable "suffixes" {
  description = "Object key suffixes that trigger jobs."
  type        = list(string)
  default     = [".png", ".jpg", ".jpeg", ".webp"]
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (IRSA), e.g. arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE."
  type        = string
}

variable "oidc_provider_url" {
  description = "The cluster's OIDC issuer URL (with or without https://), e.g. oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE."
  type        = string
}

variable "k8s_namespace" {
  description = "Namespace the workloads run in (IRSA trusts service accounts in it only)."
  type        = string
  default     = "upscale"
}

variable "worker_service_account" {
  description = "Service account of the workers (infra/k8s/serviceaccount.yaml)."
  type        = string
  default     = "upscale-worker"
}

variable "consumer_service_account" {
  description = "Service account of the SQS consumer (infra/k8s/serviceaccount.yaml)."
  type        = string
  default     = "upscale-sqs"
}

variable "kms_key_arns" {
  description = "KMS keys of SSE-KMS source/destination buckets ([] = buckets use SSE-S3)."
  type        = list(string)
  default     = []
}
