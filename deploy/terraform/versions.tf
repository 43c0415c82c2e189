terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # target_health_state (unhealthy connection termination) needs 5.40+.
      version = ">= 5.40, < 7.0"
    }
  }
}
