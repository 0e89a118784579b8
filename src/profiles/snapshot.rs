//! Snapshot generation: a profile's differential laid over its base's snapshot, for the few
//! kinds of constraint segmentti's own profiles make: narrowing an element (cardinality, types,
//! fixed and pattern values, bindings, must-support), forbidding one (`max` 0), and slicing
//! `extension` by url. Anything else in a differential is refused rather than half-handled.
//!
//! Written here rather than taken from a crate: the one Rust generator at hand
//! (`rh-foundation`'s) orders a snapshot's elements alphabetically instead of in the base's
//! order and drops element properties it does not model, which FHIR tools reading the
//! package would trip over. This module works on JSON and never reads files.

use serde_json::{Map, Value};

/// Why a snapshot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A differential element names no element of the base and starts no slice.
    #[error("{profile}: differential element `{id}` is not in the base {base}")]
    UnknownElement {
        /// The profile's url.
        profile: String,
        /// The element id.
        id: String,
        /// The base's url.
        base: String,
    },
    /// A differential widens what its base allows.
    #[error("{profile}: element `{id}` {what}")]
    Widens {
        /// The profile's url.
        profile: String,
        /// The element id.
        id: String,
        /// How.
        what: String,
    },
    /// The profile or its base is not a StructureDefinition with what a snapshot needs.
    #[error("{profile}: {what}")]
    Malformed {
        /// The profile's url.
        profile: String,
        /// What is missing.
        what: String,
    },
}

/// The snapshot elements of `profile` over `base` (which must carry a snapshot).
pub(crate) fn generate(profile: &Value, base: &Value) -> Result<Vec<Value>, SnapshotError> {
    let url = str_of(profile, "url");
    let malformed = |what: &str| SnapshotError::Malformed {
        profile: url.to_owned(),
        what: what.to_owned(),
    };
    let mut elements: Vec<Value> = base["snapshot"]["element"]
        .as_array()
        .ok_or_else(|| malformed("its base has no snapshot"))?
        .clone();
    let differential = profile["differential"]["element"]
        .as_array()
        .ok_or_else(|| malformed("it has no differential"))?;
    for diff in differential {
        let id = diff["id"]
            .as_str()
            .ok_or_else(|| malformed("a differential element has no id"))?;
        match elements.iter().position(|e| e["id"] == diff["id"]) {
            Some(at) => {
                let merged = merge(url, id, &elements[at], diff)?;
                elements[at] = merged;
            }
            None => {
                let (sliced, _) =
                    id.rsplit_once(':')
                        .ok_or_else(|| SnapshotError::UnknownElement {
                            profile: url.to_owned(),
                            id: id.to_owned(),
                            base: str_of(base, "url").to_owned(),
                        })?;
                let root = elements
                    .iter()
                    .position(|e| e["id"] == sliced)
                    .ok_or_else(|| SnapshotError::UnknownElement {
                        profile: url.to_owned(),
                        id: id.to_owned(),
                        base: str_of(base, "url").to_owned(),
                    })?;
                if elements[root].get("slicing").is_none() {
                    return Err(malformed(&format!(
                        "`{id}` slices `{sliced}`, which is not sliced"
                    )));
                }
                // A new slice goes after its root's subtree and the slices before it, which is
                // where FHIR tools look for it.
                let after = elements[root + 1..]
                    .iter()
                    .take_while(|e| str_of(e, "id").starts_with(&format!("{sliced}:")))
                    .count();
                let mut slice = merge(url, id, &elements[root], diff)?;
                if let Some(o) = slice.as_object_mut() {
                    o.remove("slicing");
                }
                elements.insert(root + 1 + after, slice);
            }
        }
    }
    Ok(elements)
}

/// `base` with `diff`'s constraints, refusing what would widen it.
fn merge(profile: &str, id: &str, base: &Value, diff: &Value) -> Result<Value, SnapshotError> {
    let widens = |what: String| SnapshotError::Widens {
        profile: profile.to_owned(),
        id: id.to_owned(),
        what,
    };
    let min = |e: &Value| e["min"].as_u64().unwrap_or(0);
    let max = |e: &Value| match e["max"].as_str() {
        Some("*") | None => u64::MAX,
        Some(n) => n.parse().unwrap_or(u64::MAX),
    };
    if diff.get("min").is_some() && min(diff) < min(base) {
        return Err(widens(format!("lowers min below the base's {}", min(base))));
    }
    if diff.get("max").is_some() && max(diff) > max(base) {
        return Err(widens(format!(
            "raises max above the base's {}",
            str_of(base, "max")
        )));
    }
    if let Some(types) = diff["type"].as_array() {
        let allowed: Vec<&Value> = base["type"]
            .as_array()
            .map(|t| t.iter().map(|t| &t["code"]).collect())
            .unwrap_or_default();
        if let Some(t) = types.iter().find(|t| !allowed.contains(&&t["code"])) {
            return Err(widens(format!("adds the type {}", t["code"])));
        }
    }
    let mut merged: Map<String, Value> = base.as_object().cloned().unwrap_or_default();
    for (key, value) in diff.as_object().into_iter().flatten() {
        if key == "constraint" {
            let mut all = base["constraint"].as_array().cloned().unwrap_or_default();
            all.extend(value.as_array().cloned().unwrap_or_default());
            merged.insert(key.clone(), Value::Array(all));
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    Ok(Value::Object(merged))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> Value {
        json!({"url": "http://example.org/Base", "snapshot": {"element": [
            {"id": "Flag", "path": "Flag", "min": 0, "max": "*"},
            {"id": "Flag.extension", "path": "Flag.extension", "min": 0, "max": "*",
             "type": [{"code": "Extension"}]},
            {"id": "Flag.status", "path": "Flag.status", "min": 1, "max": "1",
             "type": [{"code": "code"}]},
            {"id": "Flag.period", "path": "Flag.period", "min": 0, "max": "1",
             "type": [{"code": "Period"}], "constraint": [{"key": "ele-1"}]}
        ]}})
    }

    fn profile(elements: Value) -> Value {
        json!({"url": "http://example.org/P", "differential": {"element": elements}})
    }

    fn ids(elements: &[Value]) -> Vec<&str> {
        elements.iter().map(|e| str_of(e, "id")).collect()
    }

    #[test]
    fn constraints_land_on_their_element_in_the_base_order() {
        let p = profile(json!([
            {"id": "Flag.period", "path": "Flag.period", "min": 1,
             "constraint": [{"key": "seg-1"}]},
            {"id": "Flag.status", "path": "Flag.status", "fixedCode": "active"}
        ]));
        let snapshot = generate(&p, &base()).expect("snapshot");
        assert_eq!(
            ids(&snapshot),
            ["Flag", "Flag.extension", "Flag.status", "Flag.period"]
        );
        assert_eq!(snapshot[3]["min"], 1);
        assert_eq!(snapshot[3]["max"], "1");
        assert_eq!(
            snapshot[3]["constraint"],
            json!([{"key": "ele-1"}, {"key": "seg-1"}])
        );
        assert_eq!(snapshot[2]["fixedCode"], "active");
    }

    #[test]
    fn extension_slices_follow_their_root_in_order() {
        let p = profile(json!([
            {"id": "Flag.extension", "path": "Flag.extension",
             "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}},
            {"id": "Flag.extension:a", "path": "Flag.extension", "sliceName": "a", "min": 1,
             "max": "1"},
            {"id": "Flag.extension:b", "path": "Flag.extension", "sliceName": "b"}
        ]));
        let snapshot = generate(&p, &base()).expect("snapshot");
        assert_eq!(
            ids(&snapshot),
            [
                "Flag",
                "Flag.extension",
                "Flag.extension:a",
                "Flag.extension:b",
                "Flag.status",
                "Flag.period"
            ]
        );
        assert!(snapshot[2].get("slicing").is_none());
        assert_eq!(snapshot[2]["type"], json!([{"code": "Extension"}]));
    }

    #[test]
    fn widening_and_unknown_elements_are_refused() {
        for (diff, expected) in [
            (
                json!({"id": "Flag.status", "path": "Flag.status", "min": 0}),
                "lowers min",
            ),
            (
                json!({"id": "Flag.period", "path": "Flag.period", "max": "*"}),
                "raises max",
            ),
            (
                json!({"id": "Flag.period", "path": "Flag.period", "type": [{"code": "string"}]}),
                "adds the type",
            ),
            (
                json!({"id": "Flag.nothing", "path": "Flag.nothing"}),
                "is not in the base",
            ),
            (
                json!({"id": "Flag.status:x", "path": "Flag.status", "sliceName": "x"}),
                "which is not sliced",
            ),
        ] {
            let e = generate(&profile(json!([diff])), &base()).expect_err(expected);
            assert!(e.to_string().contains(expected), "{e}");
        }
    }
}
