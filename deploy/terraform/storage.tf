# The bundle bucket: private, versioned (an overwritten or deleted bundle can be recovered for
# var.bundle_noncurrent_days), encrypted with the stack's key, TLS only, access logged.
# Devices download through presigned URLs, so nothing here is public.

resource "aws_s3_bucket" "bundles" {
  # checkov:skip=CKV2_AWS_62:Nothing consumes bucket events: the backend records every upload and deletion in its audit log
  # checkov:skip=CKV_AWS_144:Bundles are release artefacts rebuilt from the release pipeline; versioning covers deletion. Add replication when a recovery region is required
  bucket = "${local.name}-bundles-${data.aws_caller_identity.current.account_id}"
}

resource "aws_s3_bucket_versioning" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "bundles" {
  bucket     = aws_s3_bucket.bundles.id
  depends_on = [aws_s3_bucket_versioning.bundles]

  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.bundle_noncurrent_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  # Uploads that broke off (the backend streams bundles in parts) cost storage until aborted.
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.kernex.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "bundles" {
  bucket                  = aws_s3_bucket.bundles.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_policy" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "TlsOnly"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.bundles.arn, "${aws_s3_bucket.bundles.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
  depends_on = [aws_s3_bucket_public_access_block.bundles]
}

resource "aws_s3_bucket_logging" "bundles" {
  bucket        = aws_s3_bucket.bundles.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "bundles/"
}

# --- access logs of the bundle bucket ----------------------------------------------------

resource "aws_s3_bucket" "access_logs" {
  # checkov:skip=CKV2_AWS_62:A log sink: nothing reacts to its objects
  # checkov:skip=CKV_AWS_144:Access logs are kept in the region they describe
  # checkov:skip=CKV_AWS_145:S3 server access logging delivers only to buckets with S3-managed keys (SSE-S3)
  bucket = "${local.name}-access-logs-${data.aws_caller_identity.current.account_id}"
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket     = aws_s3_bucket.access_logs.id
  depends_on = [aws_s3_bucket_versioning.access_logs]
  rule {
    id     = "expire-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 7
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    # S3 server access logging delivers only to buckets encrypted with S3-managed keys.
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}
