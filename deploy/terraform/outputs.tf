output "endpoint_service_name" {
  description = "Customers create their VPC endpoint (type Interface) to this service name."
  value       = aws_vpc_endpoint_service.pgcell.service_name
}

output "endpoint_service_id" {
  description = "The VPC endpoint service id (vpce-svc-...), for accepting connections."
  value       = aws_vpc_endpoint_service.pgcell.id
}

output "target_group_arn" {
  description = "pgcell's target group: [aws] target_group_arn (self-register overlay) or the TargetGroupBinding's targetGroupARN, never both."
  value       = aws_lb_target_group.pgcell.arn
}

output "nlb_arn" {
  description = "The internal NLB."
  value       = aws_lb.pgcell.arn
}

output "nlb_dns_name" {
  description = "The NLB's own DNS name (in-VPC testing only; customers use their endpoint's DNS names)."
  value       = aws_lb.pgcell.dns_name
}

output "nlb_security_group_id" {
  description = "The NLB's security group."
  value       = aws_security_group.nlb.id
}

output "pgcell_security_group_id" {
  description = "Security group for pgcell pods (security groups for pods), reachable from the NLB only."
  value       = aws_security_group.pgcell.id
}

output "registration_policy_arn" {
  description = "IAM policy for self-registration, or null."
  value       = one(aws_iam_policy.registration[*].arn)
}

output "pgcell_role_arn" {
  description = "IRSA role for pgcell's ServiceAccount (eks.amazonaws.com/role-arn), or null."
  value       = one(aws_iam_role.pgcell[*].arn)
}
