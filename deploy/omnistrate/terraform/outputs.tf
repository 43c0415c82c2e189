output "endpoint_service_name" {
  description = "What the customer's VPC endpoint connects to."
  value       = module.pgcell.endpoint_service_name
}

output "target_group_arn" {
  description = "The TargetGroupBinding's target group."
  value       = module.pgcell.target_group_arn
}

output "nlb_dns_name" {
  description = "The internal NLB (in-cell testing)."
  value       = module.pgcell.nlb_dns_name
}
