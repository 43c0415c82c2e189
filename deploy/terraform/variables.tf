variable "name" {
  description = "Name of the cell's pgcell resources (NLB, target group, security groups, IAM). At most 32 characters: the NLB and target group names are."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9-]{0,30}[a-zA-Z0-9]$", var.name))
    error_message = "name: 2 to 32 letters, digits and hyphens, not starting or ending with a hyphen."
  }
}

variable "vpc_id" {
  description = "The cell's VPC."
  type        = string
}

variable "vpc_cidr_block" {
  description = "The cell's VPC CIDR: pgcell reaches tenants' PostgreSQL servers and the Kubernetes API inside it."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets of the cell, one per availability zone: the NLB gets a node in each."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "private_subnet_ids: at least two subnets in different zones."
  }
}

variable "listener_port" {
  description = "Port clients connect to through their VPC endpoint."
  type        = number
  default     = 5432
}

variable "pgcell_port" {
  description = "pgcell's data port ([listen] addr): the target group's port, and the port pgcell registers itself with."
  type        = number
  default     = 6432
}

variable "health_port" {
  description = "pgcell's TCP health port ([listen] health_addr): the target group's health check port."
  type        = number
  default     = 6433
}

variable "deregistration_delay_seconds" {
  description = "How long the NLB keeps a deregistered target's flows (deregistration_delay.timeout_seconds). Set pgcell's [shutdown] deregistration_timeout to the same value."
  type        = number
  default     = 60

  validation {
    condition     = var.deregistration_delay_seconds >= 0 && var.deregistration_delay_seconds <= 3600
    error_message = "deregistration_delay_seconds: 0 to 3600."
  }
}

variable "health_check_interval_seconds" {
  description = "Seconds between the target group's TCP health checks (5 to 300)."
  type        = number
  default     = 10
}

variable "allowed_principals" {
  description = "ARNs allowed to create VPC endpoints to the endpoint service, e.g. [\"arn:aws:iam::123456789012:root\"] for a customer account. Empty: nobody."
  type        = list(string)
  default     = []
}

variable "acceptance_required" {
  description = "Whether each new VPC endpoint connection waits for the provider to accept it (in addition to allowed_principals)."
  type        = bool
  default     = true
}

variable "nlb_ingress_cidr_blocks" {
  description = "CIDRs allowed to reach the listener directly (not through PrivateLink), e.g. for in-VPC testing. PrivateLink traffic is governed by allowed_principals and pgcell's per-tenant VPC endpoint allow-lists, not by these."
  type        = list(string)
  default     = []
}

variable "target_security_group_ids" {
  description = "Existing security groups of the pgcell pods (e.g. the EKS node or cluster security group when pods use the node's groups) that get ingress from the NLB on the data and health ports. The module's own pgcell security group gets those rules too."
  type        = list(string)
  default     = []
}

variable "create_registration_policy" {
  description = "Create the IAM policy for pgcell's self-registration (the self-register overlay). False for the target-group-binding overlay, where pgcell needs no AWS permissions."
  type        = bool
  default     = true
}

variable "oidc_provider_arn" {
  description = "The EKS cluster's IAM OIDC provider ARN. When set (with create_registration_policy), an IRSA role for pgcell's ServiceAccount is created with the policy attached."
  type        = string
  default     = ""
}

variable "service_account" {
  description = "pgcell's ServiceAccount as namespace/name (deploy/kubernetes: pgcell/pgcell), trusted by the IRSA role."
  type        = string
  default     = "pgcell/pgcell"
}

variable "deletion_protection" {
  description = "NLB deletion protection."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
