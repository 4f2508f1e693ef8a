//! The checked-in CRDs must be what the code generates.

#[test]
fn checked_in_crds_match_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, generated) in tunlb_operator::crd_files().expect("CRDs serialise") {
        for dir in ["crds", "charts/tunlb/crds"] {
            let on_disk = std::fs::read_to_string(root.join(dir).join(name)).unwrap_or_default();
            assert!(
                on_disk == generated,
                "{dir}/{name} is stale: run `cargo run -p tunlb-operator --bin crdgen`"
            );
        }
    }
}
