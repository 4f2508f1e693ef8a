//! Writes the CRDs into crds/ and the chart's crds/ (`cargo run -p tunlb-operator --bin crdgen`).

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["crds", "charts/tunlb/crds"] {
        for (name, yaml) in tunlb_operator::crd_files()? {
            std::fs::write(root.join(dir).join(name), yaml)?;
        }
    }
    Ok(())
}
