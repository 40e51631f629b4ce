output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Endpoint of the cluster's Kubernetes API."
  value       = module.eks.cluster_endpoint
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig context for the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "image_repository" {
  description = "ECR repository for the deepfix Ray image (cluster/image/Dockerfile)."
  value       = aws_ecr_repository.ray.repository_url
}

output "artifacts_uri" {
  description = "Root URI of deepfix's datasets, training runs and model artifacts (DEEPFIX_STORAGE in the Ray pods)."
  value       = kubernetes_config_map_v1.deepfix_env.data["DEEPFIX_STORAGE"]
}

output "ray_role_arn" {
  description = "IAM role the Ray pods assume through EKS Pod Identity."
  value       = aws_iam_role.ray.arn
}

output "grafana_admin_password" {
  description = "Grafana's admin password (user admin)."
  value       = random_password.grafana_admin.result
  sensitive   = true
}
