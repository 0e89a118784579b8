//! Reading the Bundles a FHIR server answers with: the `next` link of a searchset, its matches
//! and the server's remarks (`search.mode = outcome`), and the per-entry status of a
//! transaction-response or batch-response. Pure functions over `serde_json::Value`; building
//! Bundles to send is the sink's business, not this module's.

use serde_json::Value;

use super::{FhirError, OperationOutcomeSummary};

/// `resourceType`, when it is a string.
pub(crate) fn resource_type(value: &Value) -> Option<&str> {
    value.get("resourceType").and_then(Value::as_str)
}

/// `Bundle.type` when `value` is a Bundle.
pub(crate) fn bundle_type(value: &Value) -> Option<&str> {
    (resource_type(value) == Some("Bundle"))
        .then(|| value.get("type").and_then(Value::as_str))
        .flatten()
}

/// The URL of `link[relation = next]`, as the server wrote it (absolute or relative).
pub fn next_link(bundle: &Value) -> Option<&str> {
    bundle
        .get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
        .get("url")?
        .as_str()
}

/// The entries' resources that matched the search (`search.mode` `match`, or no mode and not
/// an OperationOutcome); `include`d resources and the server's remarks are left out.
pub fn matches(bundle: &Value) -> impl Iterator<Item = &Value> {
    entries(bundle).filter_map(|entry| {
        let resource = entry.get("resource")?;
        match entry.pointer("/search/mode").and_then(Value::as_str) {
            Some("match") => Some(resource),
            None if resource_type(resource) != Some("OperationOutcome") => Some(resource),
            _ => None,
        }
    })
}

/// The OperationOutcomes a server put in a searchset to say something about the search
/// itself (such as a parameter it ignored).
pub fn search_outcomes(bundle: &Value) -> impl Iterator<Item = OperationOutcomeSummary> + '_ {
    entries(bundle).filter_map(|entry| {
        let mode = entry.pointer("/search/mode").and_then(Value::as_str);
        let resource = entry.get("resource")?;
        match mode {
            Some("outcome") | None => OperationOutcomeSummary::from_value(resource),
            _ => None,
        }
    })
}

fn entries(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
}

/// How one entry of a transaction or batch went, from `entry[i].response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOutcome {
    /// The entry's position (from 0); it matches the request Bundle's entry of that position.
    pub index: usize,
    /// The status code from `response.status` (`"201 Created"` gives 201).
    pub status: u16,
    /// `response.location`, such as `Observation/123/_history/1`.
    pub location: Option<String>,
    /// `response.etag`.
    pub etag: Option<String>,
    /// `response.outcome`, when it is an OperationOutcome.
    pub outcome: Option<OperationOutcomeSummary>,
}

impl EntryOutcome {
    /// Whether the entry succeeded (2xx).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The per-entry results of a `transaction-response` or `batch-response` Bundle. In a batch,
/// entries succeed and fail one by one; in a transaction that came back 2xx they all succeeded.
pub fn entry_outcomes(response: &Value) -> Result<Vec<EntryOutcome>, FhirError> {
    let malformed = |detail: String| FhirError::MalformedResponse {
        what: "transaction-response or batch-response",
        detail,
    };
    match bundle_type(response) {
        Some("transaction-response" | "batch-response") => {}
        Some(other) => return Err(malformed(format!("it is a Bundle of type {other}"))),
        None => {
            let found = resource_type(response).unwrap_or("something without resourceType");
            return Err(malformed(format!("it is {found}, not a Bundle")));
        }
    }
    entries(response)
        .enumerate()
        .map(|(index, entry)| {
            let response = entry
                .get("response")
                .ok_or_else(|| malformed(format!("entry {index} has no response")))?;
            let text = |name: &str| response.get(name).and_then(Value::as_str).map(str::to_owned);
            let status_line = text("status")
                .ok_or_else(|| malformed(format!("entry {index} has no response.status")))?;
            let status = status_line
                .split_whitespace()
                .next()
                .and_then(|code| code.parse::<u16>().ok())
                .filter(|code| (100..600).contains(code))
                .ok_or_else(|| {
                    malformed(format!(
                        "entry {index} has response.status {status_line:?}, which does not start with a status code"
                    ))
                })?;
            Ok(EntryOutcome {
                index,
                status,
                location: text("location"),
                etag: text("etag"),
                outcome: response
                    .get("outcome")
                    .and_then(OperationOutcomeSummary::from_value),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_entry_statuses_of_a_batch_response() {
        let response = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "201 Created", "location": "Observation/1/_history/1", "etag": "W/\"1\""}},
            {"response": {"status": "200"}},
            {"response": {"status": "422 Unprocessable Entity", "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Flag.subject: required"}]}}},
        ]});
        let outcomes = entry_outcomes(&response).expect("a batch-response");
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0].status, 201);
        assert_eq!(
            outcomes[0].location.as_deref(),
            Some("Observation/1/_history/1")
        );
        assert!(outcomes[1].is_success());
        assert!(!outcomes[2].is_success());
        assert_eq!(
            outcomes[2]
                .outcome
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("error invalid: Flag.subject: required")
        );
    }

    #[test]
    fn refuses_what_is_not_a_response_bundle() {
        for (value, needle) in [
            (
                json!({"resourceType": "OperationOutcome"}),
                "it is OperationOutcome",
            ),
            (
                json!({"resourceType": "Bundle", "type": "searchset"}),
                "type searchset",
            ),
            (
                json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "OK"}}]}),
                "entry 0 has response.status \"OK\"",
            ),
            (
                json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [{}]}),
                "entry 0 has no response",
            ),
        ] {
            let err = entry_outcomes(&value).expect_err("malformed");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn searchset_helpers() {
        let page = json!({"resourceType": "Bundle", "type": "searchset",
        "link": [{"relation": "self", "url": "Patient?_count=2"}, {"relation": "next", "url": "Patient?_cursor=abc"}],
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "Patient", "id": "b"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": "status ignored"}]}, "search": {"mode": "outcome"}},
        ]});
        assert_eq!(next_link(&page), Some("Patient?_cursor=abc"));
        let ids: Vec<_> = matches(&page).filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let remarks: Vec<_> = search_outcomes(&page).map(|o| o.to_string()).collect();
        assert_eq!(remarks, ["warning not-supported: status ignored"]);
        assert_eq!(next_link(&json!({"resourceType": "Bundle"})), None);
    }
}
