# Who can reach what (docs/deploy.md, "Security model"):
#   customers -> NLB listener       through PrivateLink only (allowed_principals)
#   in-VPC    -> NLB listener       only from nlb_ingress_cidr_blocks (default: none)
#   NLB       -> pgcell data port   PROXY v2 traffic from the NLB only, so no
#                                   one else can forge a PROXY header
#   NLB       -> pgcell health port health checks
#   admin port (metrics, /drain)    never from the NLB; in-cluster only

resource "aws_security_group" "nlb" {
  name        = "${var.name}-nlb"
  description = "pgcell NLB: listener ingress, egress to pgcell only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-nlb" })
}

resource "aws_vpc_security_group_ingress_rule" "nlb_listener" {
  for_each          = toset(var.nlb_ingress_cidr_blocks)
  security_group_id = aws_security_group.nlb.id
  description       = "Direct (non-PrivateLink) clients"
  ip_protocol       = "tcp"
  from_port         = var.listener_port
  to_port           = var.listener_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_pgcell" {
  for_each                     = local.pgcell_ports
  security_group_id            = aws_security_group.nlb.id
  description                  = "To pgcell's ${each.key} port"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.pgcell.id
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_targets" {
  for_each                     = local.target_rules
  security_group_id            = aws_security_group.nlb.id
  description                  = "To pgcell's ${each.value.port_name} port"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = each.value.security_group_id
}

resource "aws_security_group" "pgcell" {
  name        = "${var.name}-pgcell"
  description = "pgcell pods: data and health ports from the NLB only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-pgcell" })
}

locals {
  pgcell_ports = {
    data   = var.pgcell_port
    health = var.health_port
  }
  # Keyed by list index, not by group id: the ids may be unknown until
  # apply (groups created in the same run), and for_each keys must be
  # known at plan time.
  target_rules = {
    for pair in setproduct(range(length(var.target_security_group_ids)), keys(local.pgcell_ports)) :
    "${pair[0]}-${pair[1]}" => {
      security_group_id = var.target_security_group_ids[pair[0]]
      port_name         = pair[1]
      port              = local.pgcell_ports[pair[1]]
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "pgcell_from_nlb" {
  for_each                     = local.pgcell_ports
  security_group_id            = aws_security_group.pgcell.id
  description                  = "NLB to pgcell's ${each.key} port"
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_ingress_rule" "targets_from_nlb" {
  for_each                     = local.target_rules
  security_group_id            = each.value.security_group_id
  description                  = "NLB to pgcell's ${each.value.port_name} port"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_egress_rule" "pgcell_in_vpc" {
  security_group_id = aws_security_group.pgcell.id
  description       = "Tenants' PostgreSQL, the Kubernetes API, DNS, other pgcell replicas (cancel forwarding)"
  ip_protocol       = "-1"
  cidr_ipv4         = var.vpc_cidr_block
}

resource "aws_vpc_security_group_egress_rule" "pgcell_https" {
  security_group_id = aws_security_group.pgcell.id
  description       = "ELBv2 and STS APIs (self-registration, IRSA); drop it with VPC interface endpoints for both"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
