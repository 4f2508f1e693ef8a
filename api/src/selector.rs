//! Kubernetes label-selector matching (matchLabels + matchExpressions).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches everything,
/// as in Kubernetes. Unknown operators are an error rather than a silent miss.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let values = expr.values.as_deref().unwrap_or_default();
        let have = labels.get(&expr.key);
        let ok = match expr.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => !have.is_some_and(|h| values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => {
                return Err(format!(
                    "matchExpressions[{i}].operator: unknown operator {other:?} (valid: In, NotIn, Exists, DoesNotExist)"
                ));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("role", "lb")])),
            match_expressions: Some(vec![
                expr("zone", "In", &["a", "b"]),
                expr("drain", "DoesNotExist", &[]),
            ]),
        };
        assert_eq!(
            selector_matches(&sel, &labels(&[("role", "lb"), ("zone", "a")])),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&sel, &labels(&[("role", "lb"), ("zone", "c")])),
            Ok(false)
        );
        assert_eq!(
            selector_matches(
                &sel,
                &labels(&[("role", "lb"), ("zone", "a"), ("drain", "")])
            ),
            Ok(false)
        );
        assert_eq!(selector_matches(&sel, &labels(&[("zone", "a")])), Ok(false));
        assert_eq!(
            selector_matches(&LabelSelector::default(), &labels(&[])),
            Ok(true)
        );
    }

    #[test]
    fn unknown_operator_is_an_error() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![expr("a", "Near", &[])]),
        };
        assert!(
            selector_matches(&sel, &labels(&[]))
                .unwrap_err()
                .contains("unknown operator \"Near\"")
        );
    }
}
