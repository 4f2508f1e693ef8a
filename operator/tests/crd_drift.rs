//! The checked-in CRD must be what the code generates.

#[test]
fn checked_in_crd_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/virtualservice.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = tunlb_operator::crd_yaml().expect("CRD serialises");
    assert!(
        on_disk == generated,
        "crds/virtualservice.yaml is stale: run `cargo run -p tunlb-operator --bin crdgen > crds/virtualservice.yaml`"
    );
}
