//! Prints the VirtualService CRD as YAML (`cargo run -p tunlb-operator --bin crdgen > crds/virtualservice.yaml`).

fn main() -> anyhow::Result<()> {
    print!("{}", tunlb_operator::crd_yaml()?);
    Ok(())
}
