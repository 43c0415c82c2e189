# pgcell's front of one cell: internal NLB -> TCP listener -> `ip` target
# group of pgcell pods, published as a VPC endpoint service (PrivateLink).
# See docs/deploy.md for the whole path and docs/lifecycle.md for how
# pgcell leaves the target group.

locals {
  tags = merge({ "app.kubernetes.io/name" = "pgcell", "pgcell.io/cell" = var.name }, var.tags)
}

resource "aws_lb" "pgcell" {
  name               = var.name
  load_balancer_type = "network"
  # PrivateLink needs no public address; nothing reaches the NLB except
  # through the endpoint service or from inside the VPC.
  internal = true
  subnets  = var.private_subnet_ids

  # pgcell replicas are spread over the zones, but a zone may briefly have
  # none (rollout, node loss): let every NLB node reach every target.
  enable_cross_zone_load_balancing = true

  security_groups = [aws_security_group.nlb.id]
  # PrivateLink traffic is admitted by allowed_principals and, per tenant,
  # by pgcell's allowed_vpce_ids (from the PROXY v2 header). Consumer
  # address ranges overlap, so a CIDR rule could not tell customers apart.
  enforce_security_group_inbound_rules_on_private_link_traffic = "off"

  enable_deletion_protection = var.deletion_protection

  tags = local.tags
}

resource "aws_lb_target_group" "pgcell" {
  name        = var.name
  target_type = "ip"
  protocol    = "TCP"
  port        = var.pgcell_port
  vpc_id      = var.vpc_id

  # Behind PrivateLink the TCP source is the NLB; only the PROXY v2 header
  # carries the client's address and its VPC endpoint id, which pgcell's
  # per-tenant policy needs ([listen] proxy_protocol = "required").
  proxy_protocol_v2 = true
  # With ip targets the source would be the client only outside
  # PrivateLink; keep it uniform: pgcell reads addresses from the header.
  preserve_client_ip = false

  # How long a deregistered target keeps its flows. pgcell waits for its
  # target to leave the group for at most [shutdown]
  # deregistration_timeout, which must equal this, and then ends its
  # sessions itself at transaction boundaries (57P01), so the NLB's own
  # cut is never needed.
  deregistration_delay = var.deregistration_delay_seconds
  # false (the default, set deliberately): when the delay ends the NLB does
  # not reset the remaining flows; pgcell closes them gracefully within
  # [shutdown] grace instead of clients seeing a reset mid-transaction.
  connection_termination = false

  target_health_state {
    # true (the default, set deliberately): pgcell keeps its health port
    # open while it drains, so a target turns unhealthy only when pgcell is
    # really gone or hung; resetting its flows then lets clients reconnect
    # at once instead of waiting for TCP keepalive.
    enable_unhealthy_connection_termination = true
  }

  health_check {
    # pgcell's TCP health port: accepts only while pgcell is ready or
    # draining (tolerates the LOCAL PROXY header the NLB sends).
    protocol            = "TCP"
    port                = tostring(var.health_port)
    interval            = var.health_check_interval_seconds
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = local.tags
}

resource "aws_lb_listener" "pgcell" {
  load_balancer_arn = aws_lb.pgcell.arn
  # TCP, not TLS: pgcell terminates TLS itself (SNI routes tenants,
  # SCRAM-SHA-256-PLUS binds to pgcell's certificate).
  protocol = "TCP"
  port     = var.listener_port

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.pgcell.arn
  }

  tags = local.tags
}

resource "aws_vpc_endpoint_service" "pgcell" {
  network_load_balancer_arns = [aws_lb.pgcell.arn]
  # Who may create endpoints at all (customer accounts or roles) ...
  allowed_principals = var.allowed_principals
  # ... and whether each new connection waits for the provider's accept.
  acceptance_required        = var.acceptance_required
  supported_ip_address_types = ["ipv4"]

  tags = merge(local.tags, { Name = var.name })
}
