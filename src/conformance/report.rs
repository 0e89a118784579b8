//! A [`Report`] for people (a table for the terminal), and JUnit XML for CI pipelines. JSON is
//! the report's serde serialisation. Rendering only: no I/O.

use std::fmt::Write;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::{Check, Outcome, Report};

/// The class name of every test case in the JUnit XML.
const CLASSNAME: &str = "segmentti.conformance";

/// The report as a table: one line per check, and under a check that did not pass the
/// exchange that decided it.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "segmentti conformance · {} · run {}\n\n{:<6} {:<9} {:<19} {}\n",
        report.server, report.run, "result", "required", "check", "reason"
    );
    for check in &report.checks {
        let _ = writeln!(
            out,
            "{:<6} {:<9} {:<19} {}",
            outcome(check.outcome),
            if check.required { "yes" } else { "no" },
            check.id.as_str(),
            check.reason.lines().next().unwrap_or_default()
        );
        if check.outcome != Outcome::Pass
            && let Some(exchange) = check.exchanges.last()
        {
            let _ = writeln!(
                out,
                "{:37}↳ {} {} → {}: {}",
                "",
                exchange.method,
                exchange.url,
                exchange
                    .status
                    .map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                exchange.answer
            );
        }
    }
    let passed = report
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Pass)
        .count();
    let failed: Vec<&str> = report.required_failures().map(|c| c.id.as_str()).collect();
    let _ = write!(out, "\n{passed} of {} checks passed", report.checks.len());
    if failed.is_empty() {
        out.push_str("; no required check failed\n");
    } else {
        let _ = writeln!(out, "; required checks failed: {}", failed.join(", "));
    }
    out
}

fn outcome(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Skip => "SKIP",
    }
}

/// The report as JUnit XML: one test suite, a test case per check (failed ones typed
/// `required` or `optional`), each with its exchanges as system-out.
pub fn junit(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new(format!("segmentti conformance {}", report.server));
    suite.add_property(("run", report.run.as_str()));
    suite.add_test_cases(report.checks.iter().map(test_case));
    let mut junit = quick_junit::Report::new("segmentti conformance");
    junit.add_test_suite(suite);
    junit.to_string()
}

fn test_case(check: &Check) -> TestCase {
    let mut status = match check.outcome {
        Outcome::Pass => TestCaseStatus::success(),
        Outcome::Fail => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_type(if check.required {
                "required"
            } else {
                "optional"
            });
            status.set_description(check.reason.as_str());
            status
        }
        Outcome::Skip => TestCaseStatus::skipped(),
    };
    if check.outcome != Outcome::Pass {
        status.set_message(check.reason.lines().next().unwrap_or_default());
    }
    let mut case = TestCase::new(check.id.as_str(), status);
    case.set_classname(CLASSNAME);
    let exchanges: Vec<String> = check
        .exchanges
        .iter()
        .map(|e| {
            format!(
                "{} {} → {}: {}",
                e.method,
                e.url,
                e.status
                    .map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                e.answer
            )
        })
        .collect();
    let mut out = format!("{}\n{}", check.title, check.reason);
    for e in exchanges {
        out.push('\n');
        out.push_str(&e);
    }
    case.set_system_out(out);
    case
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{CheckId, Exchange};

    fn report() -> Report {
        let check = |id: CheckId, outcome, reason: &str| Check {
            id,
            title: id.title(),
            required: id.required(),
            outcome,
            reason: reason.into(),
            exchanges: vec![Exchange {
                method: "GET".into(),
                url: "http://h/metadata".into(),
                status: Some(200),
                answer: "a <CapabilityStatement> & more".into(),
            }],
        };
        Report {
            server: "http://h/".into(),
            run: "r1".into(),
            checks: vec![
                check(CheckId::Metadata, Outcome::Pass, "fine"),
                check(
                    CheckId::Transaction,
                    Outcome::Fail,
                    "accepted <bad> & \"stored\"",
                ),
                check(CheckId::Cleanup, Outcome::Skip, "nothing written"),
            ],
        }
    }

    #[test]
    fn the_table_names_failures_and_their_exchange() {
        let text = table(&report());
        assert!(text.contains("FAIL   yes       transaction"), "{text}");
        assert!(text.contains("↳ GET http://h/metadata → 200"), "{text}");
        assert!(
            text.contains("required checks failed: transaction"),
            "{text}"
        );
    }

    #[test]
    fn junit_escapes_and_reads_back() {
        let xml = junit(&report()).expect("serialises");
        let parsed = quick_junit::Report::deserialize_from_str(&xml).expect("parses");
        assert_eq!(parsed.tests, 3);
        assert_eq!(parsed.failures, 1);
        assert!(xml.contains("accepted &lt;bad&gt; &amp;"), "{xml}");
    }
}
