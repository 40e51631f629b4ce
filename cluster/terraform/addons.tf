# What runs inside the cluster before deepfix: a default StorageClass, the cluster autoscaler,
# the KubeRay operator, kube-prometheus-stack, and deepfix's namespace with the ServiceAccount
# and the ConfigMap that cluster/kuberay's Ray pods expect.

# EKS (1.30+) has no default StorageClass; etcd's and Prometheus' claims name none.
resource "kubernetes_storage_class_v1" "gp3" {
  metadata {
    name = "gp3"
    annotations = {
      "storageclass.kubernetes.io/is-default-class" = "true"
    }
  }

  storage_provisioner    = "ebs.csi.aws.com"
  volume_binding_mode    = "WaitForFirstConsumer"
  reclaim_policy         = "Delete"
  allow_volume_expansion = true

  parameters = {
    type      = "gp3"
    encrypted = "true"
  }

  depends_on = [module.eks]
}

# The Ray autoscaler asks for pods; this adds the nodes they need (and removes idle ones). EKS
# managed node groups tag their Auto Scaling groups for auto-discovery, and the autoscaler reads
# a group's labels and taints from the EKS API, so the GPU group can scale from zero.
resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_chart_version
  namespace  = "kube-system"

  values = [yamlencode({
    awsRegion = var.region
    autoDiscovery = {
      clusterName = module.eks.cluster_name
    }
    rbac = {
      serviceAccount = {
        name = "cluster-autoscaler"
        annotations = {
          "eks.amazonaws.com/role-arn" = module.cluster_autoscaler_irsa.iam_role_arn
        }
      }
    }
    extraArgs = {
      "balance-similar-node-groups"   = true
      "skip-nodes-with-system-pods"   = false
      "skip-nodes-with-local-storage" = false
      "scale-down-unneeded-time"      = "5m"
    }
  })]

  depends_on = [module.eks]
}

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_version
  namespace        = "kuberay-system"
  create_namespace = true

  depends_on = [module.eks]
}

resource "random_password" "grafana_admin" {
  length  = 24
  special = false
}

resource "helm_release" "kube_prometheus_stack" {
  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.kube_prometheus_stack_version
  namespace        = "monitoring"
  create_namespace = true

  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        # Pick up every PodMonitor/ServiceMonitor (cluster/kuberay/podmonitors.yaml), not only
        # those labelled with this release's name.
        podMonitorSelectorNilUsesHelmValues     = false
        serviceMonitorSelectorNilUsesHelmValues = false
        retention                               = var.prometheus_retention
        storageSpec = {
          volumeClaimTemplate = {
            spec = {
              accessModes = ["ReadWriteOnce"]
              resources = {
                requests = {
                  storage = var.prometheus_storage_size
                }
              }
            }
          }
        }
      }
    }
    grafana = {
      adminPassword = random_password.grafana_admin.result
      # Dashboards from ConfigMaps labelled grafana_dashboard=1 in any namespace
      # (cluster/README.md loads cluster/monitoring/grafana-dashboard.json so).
      sidecar = {
        dashboards = {
          enabled         = true
          label           = "grafana_dashboard"
          searchNamespace = "ALL"
        }
      }
      # The Ray dashboard embeds Grafana panels in an iframe.
      "grafana.ini" = {
        security = {
          allow_embedding = true
        }
        "auth.anonymous" = {
          enabled  = true
          org_role = "Viewer"
        }
      }
    }
  })]

  depends_on = [kubernetes_storage_class_v1.gp3]
}

resource "kubernetes_namespace_v1" "deepfix" {
  metadata {
    name = local.namespace
    labels = {
      "app.kubernetes.io/part-of" = "deepfix"
    }
  }

  depends_on = [module.eks]
}

# No annotation needed: the Pod Identity association in storage.tf binds it to its IAM role.
resource "kubernetes_service_account_v1" "ray" {
  metadata {
    name      = local.ray_service_account
    namespace = kubernetes_namespace_v1.deepfix.metadata[0].name
  }
}

# Read by every Ray container (envFrom in raycluster.yaml): where deepfix's bytes go on AWS.
resource "kubernetes_config_map_v1" "deepfix_env" {
  metadata {
    name      = "deepfix-env"
    namespace = kubernetes_namespace_v1.deepfix.metadata[0].name
  }

  data = {
    DEEPFIX_STORAGE    = "s3://${aws_s3_bucket.artifacts.bucket}/deepfix"
    AWS_REGION         = var.region
    AWS_DEFAULT_REGION = var.region
  }
}
