# deepfix on EKS: a VPC, a cluster with a CPU and a GPU node group, and the IAM roles the
# cluster's add-ons need. Kubernetes-side pieces are in addons.tf; storage in storage.tf.

data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, 3)

  # The namespace cluster/kuberay's manifests are written for; not a variable for that reason.
  namespace = "deepfix"

  # The ServiceAccount every Ray pod runs as (serviceAccountName in raycluster.yaml).
  ray_service_account = "deepfix-ray"

  tags = merge(var.tags, {
    Project   = "deepfix"
    ManagedBy = "terraform"
  })
}

module "vpc" {
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 5.16"

  name = var.cluster_name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 48 + i)]

  # One NAT gateway: nodes pull images and reach S3/ECR through it (S3 also has a gateway
  # endpoint below, so dataset and model traffic skips the NAT).
  enable_nat_gateway = true
  single_nat_gateway = true

  public_subnet_tags = {
    "kubernetes.io/role/elb" = 1
  }
  private_subnet_tags = {
    "kubernetes.io/role/internal-elb" = 1
  }
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = module.vpc.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = module.vpc.private_route_table_ids
}

module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 20.37"

  cluster_name    = var.cluster_name
  cluster_version = var.kubernetes_version

  cluster_endpoint_public_access           = true
  enable_cluster_creator_admin_permissions = true

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  cluster_addons = {
    coredns    = {}
    kube-proxy = {}
    vpc-cni = {
      before_compute = true
    }
    # Lets the deepfix-ray ServiceAccount assume its S3 role (storage.tf) without annotations.
    eks-pod-identity-agent = {
      before_compute = true
    }
    # etcd's and Prometheus' persistent volumes.
    aws-ebs-csi-driver = {
      service_account_role_arn = module.ebs_csi_irsa.iam_role_arn
    }
  }

  eks_managed_node_groups = {
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_instance_types
      min_size       = var.cpu_min_nodes
      max_size       = var.cpu_max_nodes
      desired_size   = var.cpu_min_nodes

      labels = {
        "deepfix.io/pool" = "cpu"
      }

      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size = 200
            volume_type = "gp3"
          }
        }
      }
    }

    gpu = {
      # Bottlerocket's NVIDIA variant ships the driver and the NVIDIA device plugin, so
      # nvidia.com/gpu is advertised without a separate DaemonSet.
      ami_type       = "BOTTLEROCKET_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      min_size       = var.gpu_min_nodes
      max_size       = var.gpu_max_nodes
      desired_size   = var.gpu_min_nodes

      labels = {
        "deepfix.io/pool" = "gpu"
      }

      # Only pods that tolerate it (the Ray `gpu` group) land on a GPU node.
      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }

      # Bottlerocket keeps images on its data volume (xvdb); the CUDA Ray image is large.
      block_device_mappings = {
        xvdb = {
          device_name = "/dev/xvdb"
          ebs = {
            volume_size = 200
            volume_type = "gp3"
          }
        }
      }
    }
  }
}

module "ebs_csi_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "~> 5.55"

  role_name             = "${var.cluster_name}-ebs-csi"
  attach_ebs_csi_policy = true

  oidc_providers = {
    main = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["kube-system:ebs-csi-controller-sa"]
    }
  }
}

module "cluster_autoscaler_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "~> 5.55"

  role_name                        = "${var.cluster_name}-cluster-autoscaler"
  attach_cluster_autoscaler_policy = true
  cluster_autoscaler_cluster_names = [module.eks.cluster_name]

  oidc_providers = {
    main = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["kube-system:cluster-autoscaler"]
    }
  }
}
