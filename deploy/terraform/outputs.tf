output "cluster_name" {
  description = "For `aws eks update-kubeconfig --name`."
  value       = aws_eks_cluster.kernex.name
}

output "database_address" {
  description = "The RDS endpoint (the URL is in the backend secret)."
  value       = aws_db_instance.kernex.address
}

output "database_master_secret_arn" {
  description = "Where RDS keeps the master password (create the kernex role with it)."
  value       = aws_db_instance.kernex.master_user_secret[0].secret_arn
}

output "bundle_bucket" {
  description = "KERNEX_STORAGE__BUCKET"
  value       = aws_s3_bucket.bundles.bucket
}

output "s3_endpoint" {
  description = "KERNEX_STORAGE__ENDPOINT"
  value       = "s3.${var.region}.amazonaws.com"
}

output "backend_secret_arn" {
  description = "Sync into the cluster as Secret kernex-backend."
  value       = aws_secretsmanager_secret.backend.arn
}

output "pki_file_system_id" {
  description = "EFS file system for the kernex-pki volume (an efs.csi.aws.com StorageClass)."
  value       = aws_efs_file_system.pki.id
}
