# Kernex on AWS: an EKS cluster for deploy/kubernetes, RDS PostgreSQL, an S3 bucket for bundles,
# EFS for the PKI volume (ReadWriteMany), and the secrets the backend reads. One stack per
# environment: `terraform workspace` or separate state keys for staging and production.

locals {
  name = "kernex-${var.environment}"
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# One key for everything Kernex stores at rest: the database, the bucket, EFS, secrets, logs
# and Kubernetes Secrets in etcd.
resource "aws_kms_key" "kernex" {
  description             = "${local.name}: data at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "kernex" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.kernex.key_id
}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_111:A key policy's Resource "*" means this key and nothing else
  # checkov:skip=CKV_AWS_356:A key policy's Resource "*" means this key and nothing else
  # checkov:skip=CKV_AWS_109:The account root administers its own key, as AWS's default key policy does
  # The account administers the key (the AWS default); CloudWatch Logs may use it for the log
  # groups of this stack.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:*${local.name}*"]
    }
  }
}
