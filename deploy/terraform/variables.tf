variable "region" {
  description = "AWS region for every resource."
  type        = string
  default     = "eu-central-1"
}

variable "environment" {
  description = "staging or production: names every resource and picks the sizes below."
  type        = string

  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment is staging or production."
  }
}

variable "vpc_cidr" {
  description = "Address range of the VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "Three zones: the database standby, the nodes and EFS spread across them."
  type        = list(string)
  default     = ["eu-central-1a", "eu-central-1b", "eu-central-1c"]
}

variable "cluster_version" {
  description = "Kubernetes version of the EKS control plane."
  type        = string
  default     = "1.33"
}

variable "node_instance_types" {
  description = "Instance types of the managed node group."
  type        = list(string)
  default     = ["m7i.large"]
}

variable "node_count" {
  description = "Desired, minimum and maximum nodes."
  type        = object({ desired = number, min = number, max = number })
  default     = { desired = 3, min = 3, max = 6 }
}

variable "db_instance_class" {
  description = "RDS instance class (docs/scaling.md: database writes per second)."
  type        = string
  default     = "db.m7g.large"
}

variable "db_allocated_storage_gb" {
  description = "Initial database storage; it grows by itself up to four times this."
  type        = number
  default     = 100
}

variable "db_backup_retention_days" {
  description = "Automated backups and point-in-time recovery window."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7
    error_message = "Keep at least 7 days of database backups."
  }
}

variable "bundle_noncurrent_days" {
  description = "Days an overwritten or deleted bundle version is kept before it expires."
  type        = number
  default     = 30
}

variable "log_retention_days" {
  description = "Retention of the VPC flow logs and EKS control-plane logs."
  type        = number
  default     = 365
}
