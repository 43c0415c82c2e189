//! The committed CRD manifest is the one the Rust types generate.

#[test]
fn committed_crd_matches_the_rust_type() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/base/pgcelltenant-crd.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = pgcell::crd::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "deploy/kubernetes/base/pgcelltenant-crd.yaml is not what src/discovery/crd.rs generates; \
         regenerate it with `cargo run -- crd > deploy/kubernetes/base/pgcelltenant-crd.yaml`"
    );
}
