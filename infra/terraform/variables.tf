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
