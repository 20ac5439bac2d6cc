//! The `key=value` flags shared by several commands: `--label KEY=VALUE` (repeatable) and
//! `--selector k=v,k2=v2`.

use std::collections::BTreeMap;

use crate::exit;

/// `--label key=value`: a non-empty key, then `=`, then the value (may be empty).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        Some(_) => Err(format!("'{s}' has an empty key (expected key=value)")),
        None => Err(format!("'{s}' is not key=value")),
    }
}

/// The labels of a repeated `--label` flag as a map; a key given twice is a usage error
/// (exit 2) naming `flag`.
pub fn label_map(
    flag: &str,
    pairs: &[(String, String)],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for (k, v) in pairs {
        if labels.insert(k.clone(), v.clone()).is_some() {
            return Err(exit::usage(format!(
                "invalid value for {flag}: key '{k}' is repeated"
            )));
        }
    }
    Ok(labels)
}

/// `--selector k=v,k2=v2`: one or more labels, each `key=value` with a non-empty key, no key
/// twice. A value cannot hold a comma.
pub fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut selector = BTreeMap::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            return Err(format!("'{s}' has an empty label (expected k=v,k2=v2)"));
        }
        let (k, v) = parse_label(part)?;
        if selector.contains_key(&k) {
            return Err(format!("key '{k}' is repeated"));
        }
        selector.insert(k, v);
    }
    Ok(selector)
}

/// A label map as text: `k=v,k2=v2` (the selector syntax), empty for no labels.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_need_a_key_and_an_equals_sign() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
    }

    #[test]
    fn a_repeated_label_is_a_usage_error() {
        let pairs = [("a".to_string(), "1".to_string()), ("b".into(), "2".into())];
        assert_eq!(label_map("--label", &pairs).unwrap().len(), 2);
        let pairs = [("a".to_string(), "1".to_string()), ("a".into(), "2".into())];
        let e = label_map("--label", &pairs).unwrap_err();
        assert!(
            e.to_string().contains("--label: key 'a' is repeated"),
            "{e}"
        );
    }

    #[test]
    fn selectors_are_comma_separated_labels() {
        let s = parse_selector("site=berlin, tier=a").unwrap();
        assert_eq!(labels_text(&s), "site=berlin,tier=a");
        assert_eq!(parse_selector("a=").unwrap()["a"], "");
        for bad in ["", "a=1,", "a=1,,b=2", "a", "=1", "a=1,a=2"] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }
}
