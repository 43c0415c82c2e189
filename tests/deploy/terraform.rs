//! `deploy/terraform`: formatted, valid with the mirrored AWS provider, and
//! applied to (and destroyed from) `moto_server`, with the result checked
//! through the AWS SDK. Terraform's working directories, state and plugin
//! links live in temp dirs; the module is copied there, so nothing is
//! written into the checkout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::kubernetes::{Cell, SELF_REGISTER, TARGET_GROUP_BINDING};
use crate::support::moto::{Moto, REGION};
use crate::{repo_path, run};

const MODULE: &str = "deploy/terraform";
/// The customer account the endpoint service admits in the apply.
const CUSTOMER: &str = "arn:aws:iam::210987654321:root";

/// `terraform` with the offline CLI config and nothing from this
/// machine's AWS environment.
fn terraform(dir: &Path) -> Command {
    let mut cmd = Command::new("terraform");
    cmd.current_dir(dir)
        .env("TF_CLI_CONFIG_FILE", repo_path(MODULE).join("cli.tfrc"))
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("CHECKPOINT_DISABLE", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("TF_PLUGIN_CACHE_DIR")
        .env_remove("TF_DATA_DIR")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN");
    cmd
}

/// A temp dir holding a copy of the module's `.tf` files in `module/`.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path().join("module");
    std::fs::create_dir(&module).unwrap();
    for entry in std::fs::read_dir(repo_path(MODULE)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            std::fs::copy(&path, module.join(path.file_name().unwrap())).unwrap();
        }
    }
    (tmp, module)
}

#[test]
fn module_is_formatted() {
    for dir in [MODULE, "deploy/omnistrate/terraform"] {
        run(
            terraform(&repo_path(dir)).args(["fmt", "-check", "-diff", "-recursive", "-no-color"]),
            60,
        );
    }
}

#[test]
fn module_is_valid_with_the_mirrored_provider() {
    let (_tmp, module) = workspace();
    run(
        terraform(&module).args(["init", "-backend=false", "-no-color"]),
        120,
    );
    run(terraform(&module).args(["validate", "-no-color"]), 120);
}

/// The root configuration of the apply: a VPC with two subnets in moto, an
/// existing node security group, and the module with the provider's
/// endpoints pointed at moto.
fn root_config(moto: &str) -> String {
    format!(
        r#"
provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  endpoints {{
    ec2   = "{moto}"
    elbv2 = "{moto}"
    iam   = "{moto}"
    sts   = "{moto}"
  }}
}}

resource "aws_vpc" "cell" {{
  cidr_block = "10.20.0.0/16"
}}

resource "aws_subnet" "a" {{
  vpc_id            = aws_vpc.cell.id
  cidr_block        = "10.20.1.0/24"
  availability_zone = "{REGION}a"
}}

resource "aws_subnet" "b" {{
  vpc_id            = aws_vpc.cell.id
  cidr_block        = "10.20.2.0/24"
  availability_zone = "{REGION}b"
}}

resource "aws_security_group" "nodes" {{
  name   = "eks-nodes"
  vpc_id = aws_vpc.cell.id
}}

module "cell" {{
  source                    = "./module"
  name                      = "pgcell-cell-1"
  vpc_id                    = aws_vpc.cell.id
  vpc_cidr_block            = aws_vpc.cell.cidr_block
  private_subnet_ids        = [aws_subnet.a.id, aws_subnet.b.id]
  allowed_principals        = ["{CUSTOMER}"]
  target_security_group_ids = [aws_security_group.nodes.id]
  oidc_provider_arn         = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/EXAMPLE"
  deletion_protection       = false
}}

output "cell" {{
  value = module.cell
}}
"#
    )
}

/// The module's resources in `terraform show -json` output, by address.
fn resources(show: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut stack = vec![&show["values"]["root_module"]];
    while let Some(m) = stack.pop() {
        for r in m["resources"].as_array().into_iter().flatten() {
            out.insert(
                r["address"].as_str().unwrap().to_owned(),
                r["values"].clone(),
            );
        }
        stack.extend(m["child_modules"].as_array().into_iter().flatten());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_destroy_against_moto() {
    let moto = Moto::start().await;
    let elb = moto.elb();
    let (tmp, _module) = workspace();
    let dir = tmp.path().to_owned();
    std::fs::write(dir.join("main.tf"), root_config(&moto.url)).unwrap();
    run(terraform(&dir).args(["init", "-no-color"]), 120);

    // The provider waits for the NLB to turn `active` with a fixed 60 s
    // poll schedule: most of the apply's time.
    let started = Instant::now();
    let apply_dir = dir.clone();
    let applied = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| {
            run(
                terraform(&apply_dir).args(["apply", "-auto-approve", "-no-color"]),
                300,
            )
        })
    })
    .await
    .unwrap();
    let applied = match applied {
        Ok(out) => out,
        Err(e) => {
            eprintln!("moto_server log:\n{}", moto.logs());
            std::panic::resume_unwind(e);
        }
    };
    eprintln!("terraform apply took {:?}", started.elapsed());
    for line in applied.lines().filter(|l| l.contains("complete after")) {
        eprintln!("{line}");
    }

    let outputs: Value =
        serde_json::from_str(&run(terraform(&dir).args(["output", "-json"]), 60)).unwrap();
    let cell = &outputs["cell"]["value"];
    let group_arn = cell["target_group_arn"].as_str().unwrap().to_owned();
    let nlb_arn = cell["nlb_arn"].as_str().unwrap().to_owned();
    assert!(cell["endpoint_service_name"]
        .as_str()
        .is_some_and(|n| n.starts_with(&format!("com.amazonaws.vpce.{REGION}.vpce-svc-"))));

    // What pgcell's configs expect of the target group.
    let own = Cell::render(SELF_REGISTER).config;
    let tgb = Cell::render(TARGET_GROUP_BINDING).config;
    for config in [&own, &tgb] {
        assert_eq!(config.listen.addr.port(), own.listen.addr.port());
        assert_eq!(config.listen.health_addr, own.listen.health_addr);
    }
    let data_port = i32::from(own.listen.addr.port());
    let health_port = own.listen.health_addr.unwrap().port().to_string();

    let groups = elb
        .describe_target_groups()
        .target_group_arns(&group_arn)
        .send()
        .await
        .unwrap();
    let group = &groups.target_groups()[0];
    assert_eq!(group.target_type().map(|t| t.as_str()), Some("ip"));
    assert_eq!(group.protocol().map(|p| p.as_str()), Some("TCP"));
    assert_eq!(
        group.port(),
        Some(data_port),
        "target group port = pgcell's data port"
    );
    assert_eq!(
        group.health_check_port(),
        Some(health_port.as_str()),
        "health check on pgcell's health port"
    );
    assert_eq!(
        group.health_check_protocol().map(|p| p.as_str()),
        Some("TCP")
    );

    let attributes: BTreeMap<String, String> = elb
        .describe_target_group_attributes()
        .target_group_arn(&group_arn)
        .send()
        .await
        .unwrap()
        .attributes()
        .iter()
        .map(|a| {
            (
                a.key().unwrap_or_default().to_owned(),
                a.value().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let attribute = |k: &str| {
        attributes
            .get(k)
            .unwrap_or_else(|| panic!("target group attribute {k} missing: {attributes:?}"))
            .as_str()
    };
    assert_eq!(attribute("proxy_protocol_v2.enabled"), "true");
    assert_eq!(
        attribute("deregistration_delay.timeout_seconds"),
        own.drain.deregistration_timeout.as_secs().to_string(),
        "the self-register config waits exactly the deregistration delay"
    );
    assert_eq!(attribute("preserve_client_ip.enabled"), "false");
    assert_eq!(
        attribute("target_health_state.unhealthy.connection_termination.enabled"),
        "true"
    );

    let nlbs = elb
        .describe_load_balancers()
        .load_balancer_arns(&nlb_arn)
        .send()
        .await
        .unwrap();
    let nlb = &nlbs.load_balancers()[0];
    assert_eq!(nlb.scheme().map(|s| s.as_str()), Some("internal"));
    assert_eq!(nlb.r#type().map(|t| t.as_str()), Some("network"));
    let nlb_attributes = elb
        .describe_load_balancer_attributes()
        .load_balancer_arn(&nlb_arn)
        .send()
        .await
        .unwrap();
    assert!(
        nlb_attributes
            .attributes()
            .iter()
            .any(|a| a.key() == Some("load_balancing.cross_zone.enabled")
                && a.value() == Some("true")),
        "cross-zone load balancing: {:?}",
        nlb_attributes.attributes()
    );
    let listeners = elb
        .describe_listeners()
        .load_balancer_arn(&nlb_arn)
        .send()
        .await
        .unwrap();
    let listener = &listeners.listeners()[0];
    assert_eq!(listener.protocol().map(|p| p.as_str()), Some("TCP"));
    assert_eq!(listener.port(), Some(5432));
    assert_eq!(
        listener.default_actions()[0].target_group_arn(),
        Some(group_arn.as_str())
    );

    // The state: least-privilege policy, endpoint service admission.
    let show: Value =
        serde_json::from_str(&run(terraform(&dir).args(["show", "-json"]), 60)).unwrap();
    let state = resources(&show);
    let policy: Value = serde_json::from_str(
        state["module.cell.aws_iam_policy.registration[0]"]["policy"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut statements: Vec<(Vec<String>, Vec<String>)> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["Effect"], "Allow");
            let list = |v: &Value| -> Vec<String> {
                let mut l: Vec<String> = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
                    other => panic!("{other}"),
                };
                l.sort();
                l
            };
            (list(&s["Action"]), list(&s["Resource"]))
        })
        .collect();
    statements.sort();
    assert_eq!(
        statements,
        vec![
            (
                vec![
                    "elasticloadbalancing:DeregisterTargets".to_owned(),
                    "elasticloadbalancing:RegisterTargets".to_owned()
                ],
                vec![group_arn.clone()]
            ),
            (
                vec!["elasticloadbalancing:DescribeTargetHealth".to_owned()],
                vec!["*".to_owned()]
            ),
        ],
        "the registration policy: exactly what self-registration calls, on this target group"
    );
    let role = &state["module.cell.aws_iam_role.pgcell[0]"];
    let trust: Value = serde_json::from_str(role["assume_role_policy"].as_str().unwrap()).unwrap();
    assert!(
        trust
            .to_string()
            .contains("system:serviceaccount:pgcell:pgcell"),
        "the IRSA role trusts pgcell's ServiceAccount only: {trust}"
    );
    // moto does not report this attribute; the provider's state does.
    let group_state = &state["module.cell.aws_lb_target_group.pgcell"];
    assert_eq!(group_state["connection_termination"], false);
    assert_eq!(group_state["proxy_protocol_v2"], true);
    let service = &state["module.cell.aws_vpc_endpoint_service.pgcell"];
    assert_eq!(service["allowed_principals"], serde_json::json!([CUSTOMER]));
    assert_eq!(service["acceptance_required"], true);

    let started = Instant::now();
    run(
        terraform(&dir).args(["destroy", "-auto-approve", "-no-color"]),
        300,
    );
    eprintln!("terraform destroy took {:?}", started.elapsed());
    let gone = elb
        .describe_target_groups()
        .target_group_arns(&group_arn)
        .send()
        .await;
    assert!(
        gone.map(|g| g.target_groups().is_empty()).unwrap_or(true),
        "the target group is gone after destroy"
    );
    drop(moto);
}
