# PostgreSQL for the backend: Multi-AZ, encrypted, backed up with point-in-time recovery,
# protected from deletion, TLS required, reachable from the cluster's nodes only. RDS keeps the
# master password in Secrets Manager and rotates it; the application's URL is in secrets.tf.

resource "aws_db_subnet_group" "kernex" {
  name       = local.name
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_security_group" "database" {
  name        = "${local.name}-database"
  description = "PostgreSQL from the cluster's nodes only"
  vpc_id      = aws_vpc.kernex.id

  ingress {
    description     = "PostgreSQL from the nodes"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_eks_cluster.kernex.vpc_config[0].cluster_security_group_id]
  }
}

resource "aws_db_parameter_group" "kernex" {
  name   = local.name
  family = "postgres16"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  # Statements slower than a second are logged (the backend's own timeout is 15 s).
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_connections"
    value = "1"
  }
}

resource "aws_db_instance" "kernex" {
  identifier     = local.name
  engine         = "postgres"
  engine_version = "16.6"
  instance_class = var.db_instance_class

  db_name  = "kernex"
  username = "kernex_admin"
  # RDS generates the password, stores it in Secrets Manager under the stack's key and rotates it.
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.kernex.key_id
  iam_database_authentication_enabled = true

  allocated_storage     = var.db_allocated_storage_gb
  max_allocated_storage = var.db_allocated_storage_gb * 4
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.kernex.arn

  multi_az               = true
  db_subnet_group_name   = aws_db_subnet_group.kernex.name
  vpc_security_group_ids = [aws_security_group.database.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.kernex.name

  backup_retention_period   = var.db_backup_retention_days
  backup_window             = "02:00-03:00"
  maintenance_window        = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot     = true
  deletion_protection       = true
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.name}-final"

  auto_minor_version_upgrade            = true
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.kernex.arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 30
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
}

resource "aws_iam_role" "rds_monitoring" {
  name = "${local.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
