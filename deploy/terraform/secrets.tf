# What the backend reads, in one Secrets Manager secret whose keys are the files the Kubernetes
# manifests mount (deploy/kubernetes/README.md): database-url, database-password, s3-access-key,
# s3-secret-key. Sync it into the cluster as Secret `kernex-backend` (External Secrets Operator
# or `kubectl create secret` from `aws secretsmanager get-secret-value`).

resource "random_password" "database" {
  length  = 40
  special = false # it goes into a URL
}

# The backend signs presigned download URLs with these keys: signatures made with an IAM
# role's session credentials die with the session, while a URL must live exactly its own
# lifetime (KERNEX_STORAGE__URL_EXPIRY_S). The user may touch the bundle bucket only.
resource "aws_iam_user" "backend" {
  # checkov:skip=CKV_AWS_273:Presigned URLs must outlive no session: long-lived keys of a user limited to the bundle bucket (comment above)
  name = "${local.name}-backend"
}

resource "aws_iam_access_key" "backend" {
  user = aws_iam_user.backend.name
}

resource "aws_iam_user_policy" "backend" {
  name = "bundle-bucket"
  user = aws_iam_user.backend.name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
        Resource = aws_s3_bucket.bundles.arn
      },
      {
        Effect = "Allow"
        Action = [
          "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
          "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
        ]
        Resource = "${aws_s3_bucket.bundles.arn}/*"
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = aws_kms_key.kernex.arn
      },
    ]
  })
}

resource "aws_secretsmanager_secret" "backend" {
  # checkov:skip=CKV2_AWS_57:Rotation is a planned change (new keys, then a rolling restart of the backend): docs/upgrades.md
  name                    = "kernex/${var.environment}/backend"
  description             = "Kernex backend: database URL and password, S3 keys"
  kms_key_id              = aws_kms_key.kernex.arn
  recovery_window_in_days = 30
}

resource "aws_secretsmanager_secret_version" "backend" {
  secret_id = aws_secretsmanager_secret.backend.id
  secret_string = jsonencode({
    "database-url"      = "postgresql+asyncpg://kernex@${aws_db_instance.kernex.address}:${aws_db_instance.kernex.port}/kernex?ssl=require"
    "database-password" = random_password.database.result
    "s3-access-key"     = aws_iam_access_key.backend.id
    "s3-secret-key"     = aws_iam_access_key.backend.secret
  })
}
