//! The Grafana dashboard and the Omnistrate spec parse, and name only
//! metrics pgcell exports: the `pgcell_*` constants of `src/metrics/names.rs`
//! (histograms also as their `_bucket`, `_sum` and `_count` series). The
//! Omnistrate spec's `$terraform.out.*` references are outputs its
//! Terraform service has, and its kustomization renders (with sample
//! values for Omnistrate's templates) into typed objects.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::manifests::Rendered;
use crate::repo_path;

/// Every series name pgcell exports.
fn exported_series() -> BTreeSet<String> {
    // The names are declared in `names.rs`; which are histograms, in
    // `metrics.rs`'s descriptions.
    let source = std::fs::read_to_string(repo_path("src/metrics/names.rs")).unwrap();
    let described = std::fs::read_to_string(repo_path("src/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    let mut consts = std::collections::BTreeMap::new();
    for line in source.lines() {
        let line = line.trim();
        let declared = line
            .strip_prefix("pub const ")
            .or_else(|| line.strip_prefix("pub(crate) const "));
        if let Some(rest) = declared {
            if let Some((ident, value)) = rest.split_once(": &str = \"") {
                if let Some(name) = value.strip_suffix("\";") {
                    if name.starts_with("pgcell_") {
                        consts.insert(ident.to_owned(), name.to_owned());
                        names.insert(name.to_owned());
                    }
                }
            }
        }
    }
    // describe_histogram!(NAME, ...) may span lines: look at what follows.
    for (i, _) in described.match_indices("describe_histogram!(") {
        let ident: String = described[i + "describe_histogram!(".len()..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        histograms.insert(consts[&ident].clone());
    }
    assert!(
        names.len() > 30,
        "found {} metric names in src/metrics/names.rs",
        names.len()
    );
    assert!(histograms.contains("pgcell_pool_wait_seconds"));
    for h in histograms {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{h}{suffix}"));
        }
    }
    names
}

/// `pgcell_…` identifiers in `text`.
fn pgcell_identifiers(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("pgcell_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if before_ok {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Every string in `value`.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(m) => m.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out)
        }),
        _ => {}
    }
}

#[test]
fn dashboard_uses_only_exported_metrics_and_covers_the_essentials() {
    let exported = exported_series();
    let text = std::fs::read_to_string(repo_path("deploy/grafana/pgcell.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().into_iter().flatten();
        for t in targets {
            exprs.push(t["expr"].as_str().expect("a PromQL expr").to_owned());
        }
    }
    let mut all = Vec::new();
    strings(&dashboard, &mut all);
    let used: BTreeSet<String> = all.iter().flat_map(|s| pgcell_identifiers(s)).collect();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics pgcell does not export: {unknown:?}"
    );
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| pgcell_identifiers(e)).collect();
    for needed in [
        "pgcell_client_connections_active",
        "pgcell_client_rejections_total",
        "pgcell_pool_wait_seconds_bucket",
        "pgcell_transaction_duration_seconds_bucket",
        "pgcell_backend_connect_errors_total",
        "pgcell_target_state",
        "pgcell_drain_phase",
    ] {
        assert!(queried.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn omnistrate_spec_parses_and_names_only_what_exists() {
    let exported = exported_series();
    let text =
        std::fs::read_to_string(repo_path("deploy/omnistrate/pgcell-service-plan.yaml")).unwrap();
    let spec: Value = serde_saphyr::from_str(&text).expect("the Omnistrate spec is YAML");
    let services = spec["services"].as_array().expect("services");
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["terraform", "postgres", "pgcell", "privatePostgres"]
    );

    let pgcell = &services[2];
    let metrics: BTreeSet<String> = pgcell["metrics"]["names"]
        .as_array()
        .expect("pgcell's metrics")
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    let unknown: Vec<_> = metrics.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the Omnistrate spec names metrics pgcell does not export: {unknown:?}"
    );
    let admin = crate::kubernetes::Cell::render(crate::kubernetes::TARGET_GROUP_BINDING)
        .config
        .listen
        .admin_addr
        .unwrap()
        .port();
    assert_eq!(
        pgcell["metrics"]["port"],
        u64::from(admin),
        "metrics from the admin port"
    );

    // Every `$terraform.out.X` is an output of the Terraform service.
    let outputs =
        std::fs::read_to_string(repo_path("deploy/omnistrate/terraform/outputs.tf")).unwrap();
    let outputs: BTreeSet<&str> = outputs
        .lines()
        .filter_map(|l| l.strip_prefix("output \""))
        .filter_map(|l| l.split('"').next())
        .collect();
    let kustomize =
        std::fs::read_to_string(repo_path("deploy/omnistrate/kustomize/kustomization.yaml"))
            .unwrap();
    for source in [&text, &kustomize] {
        for (i, _) in source.match_indices("$terraform.out.") {
            let name: String = source[i + "$terraform.out.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                outputs.contains(name.as_str()),
                "$terraform.out.{name} is not an output of deploy/omnistrate/terraform"
            );
        }
    }
    // Every `pgcell_…` word is a metric or such an output.
    let mut all = Vec::new();
    strings(&spec, &mut all);
    for word in all.iter().flat_map(|s| pgcell_identifiers(s)) {
        assert!(
            exported.contains(&word) || outputs.contains(word.as_str()),
            "{word}"
        );
    }
    // The endpoint is the endpoint service; the customer's account is the
    // allowed principal.
    let private = &services[3];
    assert_eq!(private["passive"], true);
    assert_eq!(
        private["endpointConfiguration"]["postgres"]["host"],
        "{{ $terraform.out.endpoint_service_name }}"
    );
    let wrapper =
        std::fs::read_to_string(repo_path("deploy/omnistrate/terraform/main.tf")).unwrap();
    assert!(wrapper
        .contains("allowed_principals  = [\"arn:aws:iam::{{ $var.connectAccountID }}:root\"]"));
    assert!(
        wrapper.contains("create_registration_policy = false"),
        "TargetGroupBinding style: no self-registration"
    );
}

/// Copies `from` into `to`, replacing Omnistrate's `{{ … }}` templates with
/// sample values in YAML files.
fn copy_templated(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_templated(&path, &target);
        } else {
            let text = std::fs::read_to_string(&path).unwrap()
                .replace("{{ $terraform.out.target_group_arn }}", "arn:aws:elasticloadbalancing:us-east-1:111122223333:targetgroup/pgcell-i-1/0123456789abcdef")
                .replace("{{ $var.tenantID }}", "acme")
                .replace("{{ $var.allowedVpceIds }}", "[\"vpce-0123456789abcdef0\"]")
                .replace("{{ $sys.namespace }}", "instance-1");
            assert!(
                !text.contains("{{ $"),
                "{}: a template without a sample value",
                path.display()
            );
            std::fs::write(&target, text).unwrap();
        }
    }
}

#[test]
fn omnistrate_kustomization_renders_with_sample_values() {
    let tmp = tempfile::tempdir().unwrap();
    copy_templated(
        &repo_path("deploy/kubernetes"),
        &tmp.path().join("deploy/kubernetes"),
    );
    copy_templated(
        &repo_path("deploy/omnistrate/kustomize"),
        &tmp.path().join("deploy/omnistrate/kustomize"),
    );
    let rendered = Rendered::render_path(&tmp.path().join("deploy/omnistrate/kustomize"));
    let bindings = rendered.target_group_bindings();
    assert_eq!(bindings.len(), 1);
    assert!(bindings[0]
        .spec
        .target_group_arn
        .as_deref()
        .unwrap()
        .contains("pgcell-i-1"));
    let tenants = rendered.tenants();
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0].spec.allowed_vpce_ids, ["vpce-0123456789abcdef0"]);
}
