//! Segments that age in `serve` (issue 24, finding 7), against the real test server: once a
//! checkpoint exists, scheduled incremental runs read only what changed, so a client with no
//! new data keeps its segment; a `full_schedule` tick re-assesses every client as of its day,
//! and a client whose only contact has left the 12-month window moves on with no new data. The
//! day is moved with `as_of`, the setting kept for tests and trials.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::harness::TestServer;
use crate::serve::{active_segments, config, sample, start, until};

/// `serve` with `lines` in its configuration, until it has made `runs` successful runs.
async fn serve_until(dir: &Path, server: &TestServer, lines: &str, runs: f64) {
    // No CDS Hooks call is made: the issuer's keys are never fetched.
    let serve = start(&config(dir, server, "http://127.0.0.1:9/jwks", lines));
    let http = reqwest::Client::new();
    until(&http, &serve, "scheduled runs", |m| {
        sample(m, "segmentti_runs_total", Some(("outcome", "success"))) >= runs
    })
    .await;
}

fn checkpoint(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("state.json")).expect("checkpoint saved");
    serde_json::from_str(&text).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_24_a_full_pass_ages_a_segment_with_no_new_data() {
    let server = TestServer::start().await;
    // Aged 45, one home visit: a moderate support need and reduced coping, segment 2 while the
    // visit is within 12 months; segment 1 (nothing identified) once it is not.
    server
        .put(&[
            json!({"resourceType": "Patient", "id": "ageing", "birthDate": "1980-05-01", "gender": "female"}),
            json!({"resourceType": "Encounter", "id": "ageing-visit", "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
                   "subject": {"reference": "Patient/ageing"},
                   "period": {"start": "2025-01-15T10:00:00+02:00", "end": "2025-01-15T11:00:00+02:00"}}),
        ])
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let segment =
        |code: &str| BTreeMap::from([("Patient/ageing".to_owned(), vec![code.to_owned()])]);

    // 1. No checkpoint: the first run is full.
    let every_second = "schedule = \"* * * * * *\"";
    serve_until(
        dir.path(),
        &server,
        &format!("as_of = \"2025-06-01\"\n{every_second}"),
        1.0,
    )
    .await;
    assert_eq!(active_segments(&server).await, segment("2"));
    // The data were written well before the checkpoint: from here on only the day moves.
    let mut first = checkpoint(dir.path());
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("instant");
    first["since"] = json!(now);
    std::fs::write(dir.path().join("state.json"), first.to_string()).expect("checkpoint");

    // 2. Nine months on, an incremental run keeps the segment: nothing changed. One tick a
    //    minute, a few seconds from now: a run saves its start less five minutes, so a second
    //    one would read the client again.
    let later = "as_of = \"2026-03-01\"";
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let once = format!(
        "schedule = \"{} * * * * *\"\nfull_schedule = \"0 0 0 1 1 *\"",
        soon.second()
    );
    serve_until(dir.path(), &server, &format!("{later}\n{once}"), 1.0).await;
    assert_eq!(active_segments(&server).await, segment("2"));

    // 3. A full pass, with no new data: the visit has left the window, and the client moves.
    serve_until(
        dir.path(),
        &server,
        &format!("{later}\nfull_schedule = \"* * * * * *\""),
        1.0,
    )
    .await;
    assert_eq!(active_segments(&server).await, segment("1"));
}
