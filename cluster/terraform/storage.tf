# Where deepfix keeps bytes on AWS: an S3 bucket for prepared datasets, Ray Train runs and
# model artifacts (model metadata stays in etcd), an ECR repository for the Ray image, and the
# role the Ray pods use to reach the bucket.

resource "aws_s3_bucket" "artifacts" {
  bucket = var.artifacts_bucket
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_ecr_repository" "ray" {
  name = "deepfix-ray"
  # Tags name the Ray version (2.60.0-py311, 2.60.0-py311-gpu); push a new tag, never move one.
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }
}

data "aws_iam_policy_document" "pod_identity_trust" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "artifacts_rw" {
  statement {
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.artifacts.arn]
  }

  statement {
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }
}

resource "aws_iam_role" "ray" {
  name               = "${var.cluster_name}-deepfix-ray"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_trust.json
}

resource "aws_iam_role_policy" "ray_artifacts" {
  name   = "artifacts-read-write"
  role   = aws_iam_role.ray.id
  policy = data.aws_iam_policy_document.artifacts_rw.json
}

# EKS Pod Identity: every pod running as deepfix/deepfix-ray gets this role's credentials.
resource "aws_eks_pod_identity_association" "ray" {
  cluster_name    = module.eks.cluster_name
  namespace       = local.namespace
  service_account = local.ray_service_account
  role_arn        = aws_iam_role.ray.arn
}
