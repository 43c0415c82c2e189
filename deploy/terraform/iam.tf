# Least privilege for self-registration (docs/lifecycle.md, "IAM"): register
# and deregister on this target group only; DescribeTargetHealth supports
# no resource-level permissions, hence "*" for it alone (it only reads).

data "aws_iam_policy_document" "registration" {
  statement {
    sid       = "RegisterSelf"
    effect    = "Allow"
    actions   = ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"]
    resources = [aws_lb_target_group.pgcell.arn]
  }
  statement {
    sid       = "SeeOwnTargetState"
    effect    = "Allow"
    actions   = ["elasticloadbalancing:DescribeTargetHealth"]
    resources = ["*"]
  }
}

resource "aws_iam_policy" "registration" {
  count       = var.create_registration_policy ? 1 : 0
  name        = "${var.name}-pgcell-registration"
  description = "pgcell self-registration in target group ${var.name}"
  policy      = data.aws_iam_policy_document.registration.json
  tags        = local.tags
}

locals {
  oidc_issuer = replace(var.oidc_provider_arn, "/^arn:[^:]+:iam::[0-9]+:oidc-provider\\//", "")
  sa_parts    = split("/", var.service_account)
}

data "aws_iam_policy_document" "irsa_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${local.sa_parts[0]}:${local.sa_parts[1]}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "pgcell" {
  count              = var.create_registration_policy && var.oidc_provider_arn != "" ? 1 : 0
  name               = "${var.name}-pgcell"
  description        = "pgcell pods (IRSA) of cell ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "pgcell" {
  count      = length(aws_iam_role.pgcell)
  role       = aws_iam_role.pgcell[0].name
  policy_arn = aws_iam_policy.registration[0].arn
}
