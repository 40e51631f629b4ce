variable "region" {
  description = "AWS region for the VPC, the EKS cluster, the artifacts bucket and the image repository."
  type        = string
  default     = "us-west-2"
}

variable "cluster_name" {
  description = "Name of the EKS cluster; also the prefix of the VPC and IAM role names."
  type        = string
  default     = "deepfix"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes minor version, e.g. \"1.33\". Keep the cluster-autoscaler chart's image on the same minor."
  type        = string
  default     = "1.33"
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; three private /20 subnets (nodes) and three public /24 subnets (NAT, load balancers) are cut from it."
  type        = string
  default     = "10.42.0.0/16"
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Ray head, preparation workers, etcd, operators, monitoring). raycluster.yaml sizes a `cpu` worker pod for 16 vCPU / 64 GiB."
  type        = list(string)
  default     = ["m6i.4xlarge"]
}

variable "cpu_min_nodes" {
  description = "Minimum size of the CPU node group: room for the Ray head, etcd and the system pods when idle."
  type        = number
  default     = 2
}

variable "cpu_max_nodes" {
  description = "Maximum size of the CPU node group: the Ray `cpu` group's maxReplicas (10) plus the head and system pods."
  type        = number
  default     = 12
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (Ray Train workers, Serve replicas). raycluster.yaml sizes a `gpu` worker pod for one GPU, 8 vCPU and 32 GiB (g5.2xlarge)."
  type        = list(string)
  default     = ["g5.2xlarge"]
}

variable "gpu_min_nodes" {
  description = "Minimum size of the GPU node group; 0 lets it scale to zero when nothing trains or serves."
  type        = number
  default     = 0
}

variable "gpu_max_nodes" {
  description = "Maximum size of the GPU node group; match the Ray `gpu` group's maxReplicas (8)."
  type        = number
  default     = 8
}

variable "artifacts_bucket" {
  description = "Name of the S3 bucket for prepared datasets, training runs and model artifacts (globally unique, so no default)."
  type        = string
}

variable "kuberay_version" {
  description = "Version of the kuberay-operator Helm chart; >= 1.6 for RayCluster authOptions.secretName."
  type        = string
  default     = "1.6.2"
}

variable "kube_prometheus_stack_version" {
  description = "Version of the kube-prometheus-stack Helm chart (Prometheus operator, Prometheus, Grafana)."
  type        = string
  default     = "88.0.1"
}

variable "cluster_autoscaler_chart_version" {
  description = "Version of the cluster-autoscaler Helm chart, which adds nodes for the pods the Ray autoscaler creates."
  type        = string
  default     = "9.50.1"
}

variable "prometheus_retention" {
  description = "How long Prometheus keeps samples, e.g. \"15d\"."
  type        = string
  default     = "15d"
}

variable "prometheus_storage_size" {
  description = "Size of Prometheus' persistent volume, e.g. \"50Gi\"."
  type        = string
  default     = "50Gi"
}

variable "tags" {
  description = "Extra tags on every AWS resource."
  type        = map(string)
  default     = {}
}
