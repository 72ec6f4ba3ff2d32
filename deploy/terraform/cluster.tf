# EKS for deploy/kubernetes: private nodes, the API endpoint reachable from inside the VPC only, Kubernetes Secrets encrypted with the stack's KMS key, every
# control-plane log kept. The EFS CSI driver provides the ReadWriteMany PKI volume.

resource "aws_eks_cluster" "kernex" {
  name     = local.name
  version  = var.cluster_version
  role_arn = aws_iam_role.cluster.arn

  vpc_config {
    subnet_ids              = aws_subnet.private[*].id
    # The Kubernetes API is reachable from inside the VPC only: operators and CI come in
    # through a VPN or an SSM session on a host in the VPC.
    endpoint_private_access = true
    endpoint_public_access  = false
    security_group_ids      = [aws_security_group.cluster.id]
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.kernex.arn
    }
  }

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  access_config {
    authentication_mode = "API"
  }

  depends_on = [aws_cloudwatch_log_group.cluster, aws_iam_role_policy_attachment.cluster]
}

resource "aws_cloudwatch_log_group" "cluster" {
  # The name EKS writes to; created here to own its retention and encryption.
  name              = "/aws/eks/${local.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.kernex.arn
}

resource "aws_security_group" "cluster" {
  name        = "${local.name}-cluster"
  description = "EKS control plane: HTTPS from inside the VPC"
  vpc_id      = aws_vpc.kernex.id

  ingress {
    description = "Kubernetes API from the VPC"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description = "To the nodes and AWS services inside the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [var.vpc_cidr]
  }
}

resource "aws_iam_role" "cluster" {
  name = "${local.name}-cluster"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "eks.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_eks_node_group" "kernex" {
  cluster_name    = aws_eks_cluster.kernex.name
  node_group_name = "${local.name}-nodes"
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = aws_subnet.private[*].id
  instance_types  = var.node_instance_types
  ami_type        = "AL2023_x86_64_STANDARD"

  scaling_config {
    desired_size = var.node_count.desired
    min_size     = var.node_count.min
    max_size     = var.node_count.max
  }

  update_config {
    max_unavailable = 1
  }

  depends_on = [aws_iam_role_policy_attachment.nodes]
}

resource "aws_iam_role" "nodes" {
  name = "${local.name}-nodes"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "nodes" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])
  role       = aws_iam_role.nodes.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.value}"
}

# --- the PKI volume: EFS (ReadWriteMany, flock across nodes), encrypted, backed up ----------

resource "aws_eks_addon" "efs_csi" {
  cluster_name = aws_eks_cluster.kernex.name
  addon_name   = "aws-efs-csi-driver"
}

resource "aws_efs_file_system" "pki" {
  encrypted        = true
  kms_key_id       = aws_kms_key.kernex.arn
  performance_mode = "generalPurpose"
  tags             = { Name = "${local.name}-pki" }
}

resource "aws_efs_backup_policy" "pki" {
  file_system_id = aws_efs_file_system.pki.id
  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_mount_target" "pki" {
  count           = length(var.availability_zones)
  file_system_id  = aws_efs_file_system.pki.id
  subnet_id       = aws_subnet.private[count.index].id
  security_groups = [aws_security_group.efs.id]
}

resource "aws_security_group" "efs" {
  name        = "${local.name}-efs"
  description = "EFS for the PKI volume: NFS from the cluster's nodes only"
  vpc_id      = aws_vpc.kernex.id

  ingress {
    description     = "NFS from the nodes"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [aws_eks_cluster.kernex.vpc_config[0].cluster_security_group_id]
  }
}
