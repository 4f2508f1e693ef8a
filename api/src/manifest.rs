//! Reading VirtualServices from YAML files, strictly: unknown fields, wrong
//! types and syntax errors are reported with the file, document, object and
//! field path. Documents of other kinds are skipped, so the same directory can
//! be `kubectl apply`-ed.

use serde::Deserialize;

use crate::types::{API_VERSION, GROUP, KIND, VirtualService};

/// A problem with one document of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: document {document}{}: {message}", object.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
pub struct ManifestError {
    pub source_name: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// `VirtualService namespace/name` when known.
    pub object: Option<String>,
    pub message: String,
}

/// Parses every document of `text`; one result per VirtualService document.
pub fn parse_documents(
    source_name: &str,
    text: &str,
) -> Vec<Result<VirtualService, ManifestError>> {
    documents(source_name, text).collect()
}

/// Like [`parse_documents`], one document at a time: a caller that keeps only
/// part of each object never holds every parsed object at once.
pub fn documents<'a>(
    source_name: &'a str,
    text: &'a str,
) -> impl Iterator<Item = Result<VirtualService, ManifestError>> + 'a {
    let mut stream = serde_yaml::Deserializer::from_str(text).enumerate();
    let mut broken = false;
    std::iter::from_fn(move || {
        while !broken {
            let (i, doc) = stream.next()?;
            match parse_one(source_name, i + 1, doc) {
                Ok(None) => continue,
                Ok(Some(r)) => return Some(r),
                Err(e) => {
                    // A syntax error leaves the rest of the stream unreadable.
                    broken = true;
                    return Some(Err(e));
                }
            }
        }
        None
    })
}

/// One document: `Ok(None)` for another kind or an empty document, `Err` when
/// the YAML stream itself is broken.
fn parse_one(
    source_name: &str,
    document: usize,
    doc: serde_yaml::Deserializer<'_>,
) -> Result<Option<Result<VirtualService, ManifestError>>, ManifestError> {
    let err = |object: Option<String>, message: String| ManifestError {
        source_name: source_name.to_string(),
        document,
        object,
        message,
    };
    let value = match serde_yaml::Value::deserialize(doc) {
        Ok(v) => v,
        Err(e) => return Err(err(None, format!("invalid YAML: {e}"))),
    };
    if value.is_null() {
        return Ok(None);
    }
    let kind = value.get("kind").and_then(|k| k.as_str());
    let api_version = value.get("apiVersion").and_then(|k| k.as_str());
    match (kind, api_version) {
        (Some(KIND), Some(API_VERSION)) => {}
        (Some(KIND), Some(v)) if v.split_once('/').is_some_and(|(g, _)| g == GROUP) => {
            return Ok(Some(Err(err(
                None,
                format!("apiVersion: {v:?} is not served (use {API_VERSION})"),
            ))));
        }
        (Some(_), _) => return Ok(None),
        (None, _) => return Ok(Some(Err(err(None, "kind: missing".to_string())))),
    }
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_string();
    let label = Some(format!(
        "VirtualService {namespace}/{}",
        name.as_deref().unwrap_or("<unnamed>")
    ));
    if name.as_deref().is_none_or(str::is_empty) {
        return Ok(Some(Err(err(label, "metadata.name: required".to_string()))));
    }
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let strict = serde_ignored::Deserializer::new(value, &mut record);
    let parsed = serde_path_to_error::deserialize::<_, VirtualService>(strict);
    // The derived type reads apiVersion/kind through TypeMeta, which serde_ignored cannot see.
    unknown.retain(|p| p != "apiVersion" && p != "kind");
    Ok(Some(match parsed {
        Err(e) => Err(err(label, format!("{}: {}", e.path(), e.inner()))),
        Ok(_) if !unknown.is_empty() => Err(err(
            label,
            unknown
                .iter()
                .map(|p| format!("{p}: unknown field"))
                .collect::<Vec<_>>()
                .join("; "),
        )),
        Ok(mut vs) => {
            vs.metadata.namespace = Some(namespace);
            Ok(vs)
        }
    }))
}

/// The namespace/name of every VirtualService document, even ones whose spec
/// is invalid (so that `delete` works on a file that no longer validates).
pub fn object_keys(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|e| format!("invalid YAML: {e}"))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
            continue;
        }
        let meta = value.get("metadata");
        let field = |f: &str| {
            meta.and_then(|m| m.get(f))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        if let Some(name) = field("name") {
            out.push((field("namespace").unwrap_or_else(|| "default".into()), name));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: web}
spec:
  vip: 192.168.56.185
  ports: [{port: 80}]
  scheduler: wrr
  backends: {static: [{address: 192.168.56.183}]}
"#;

    fn errors(text: &str) -> Vec<String> {
        parse_documents("f.yaml", text)
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_defaults_namespace() {
        let r = parse_documents("f.yaml", GOOD);
        let vs = r[0].as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vs.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            vs.spec
                .backends
                .static_servers
                .as_ref()
                .map(|s| s[0].weight),
            Some(1)
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let text = GOOD.replace("scheduler: wrr", "scheduler: wrr\n  shceduler: rr");
        assert_eq!(
            errors(&text),
            vec!["f.yaml: document 1 (VirtualService default/web): spec.shceduler: unknown field"]
        );
    }

    #[test]
    fn unknown_scheduler_lists_valid_ones() {
        let e = errors(&GOOD.replace("scheduler: wrr", "scheduler: fastest"));
        assert!(
            e[0].contains("spec.scheduler: unknown variant `fastest`, expected one of `rr`, `wrr`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn unknown_protocol_is_named() {
        let e = errors(&GOOD.replace("{port: 80}", "{port: 80, protocol: ICMP}"));
        assert!(
            e[0].contains("spec.ports[0].protocol: unknown variant `ICMP`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn malformed_yaml_and_other_kinds() {
        let e = errors("kind: [unclosed");
        assert!(
            e[0].starts_with("f.yaml: document 1: invalid YAML"),
            "{}",
            e[0]
        );
        let text = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\n---\n{GOOD}");
        let r = parse_documents("f.yaml", &text);
        assert_eq!(r.len(), 1);
        assert!(r[0].is_ok());
    }

    #[test]
    fn wrong_version_and_missing_name() {
        let e = errors(&GOOD.replace("v1alpha1", "v9"));
        assert!(e[0].contains("apiVersion: \"tunlb.io/v9\" is not served"));
        let e = errors(&GOOD.replace("{name: web}", "{labels: {a: b}}"));
        assert!(e[0].contains("metadata.name: required"));
    }
}
