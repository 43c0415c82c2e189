# The cell's AWS side for Omnistrate's Terraform service: deploy/terraform
# with the deployment cell's network filled in by Omnistrate's templating
# ({{ $sys... }}, {{ $var... }} are replaced before terraform runs).
# pgcell runs in the target-group-binding style here: the AWS Load Balancer
# Controller of the cell registers the pods, so no IAM policy for pgcell.

module "pgcell" {
  source = "../../terraform"

  name           = "pgcell-{{ $sys.id }}"
  vpc_id         = "{{ $sys.deploymentCell.cloudProviderNetworkID }}"
  vpc_cidr_block = "{{ $sys.deploymentCell.cidrRange }}"
  private_subnet_ids = [
    "{{ $sys.deploymentCell.privateSubnetIDs[0].id }}",
    "{{ $sys.deploymentCell.privateSubnetIDs[1].id }}",
    "{{ $sys.deploymentCell.privateSubnetIDs[2].id }}",
  ]
  # The customer's account may create endpoints; its connections are
  # accepted without a manual step (the instance exists for that customer).
  allowed_principals  = ["arn:aws:iam::{{ $var.connectAccountID }}:root"]
  acceptance_required = false
  # The cell's nodes carry the pods (VPC CNI without security groups for
  # pods): they get ingress from the NLB on pgcell's ports.
  target_security_group_ids  = ["{{ $sys.deploymentCell.securityGroupID }}"]
  create_registration_policy = false
  deletion_protection        = false
}
