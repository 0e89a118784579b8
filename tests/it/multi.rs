//! `run` over several sources against real test servers: one synthetic population spread
//! over a health-care, a social-welfare and an oral-health server (`synth --service-area`),
//! joined on the identity code. The joined segments equal an offline run over the whole
//! population; each server's Flags and Observations refer to its own resources only; a rerun
//! writes nothing; duplicate and linked Patients (on one server and across two) follow the
//! documented rules; `explain` shows a joined client with the sources that hold it; a source down
//! for reads stops the run before anything is written (unless `--allow-partial`), and a target
//! down for writes (a scripted mock) fails alone with exit code 7.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::TestServer;
use crate::roundtrip::{all, assert_wrote_nothing};
use crate::support::{Synth, ndjson, segmentti, synth, text};

const JOIN_KEY: &str = "segmentti-integration-test-join-key";
const CLIENTS: u64 = 90;

/// `segmentti` with a fixed join key, off the async runtime (a mock server may need it).
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        std::process::Command::new(env!("CARGO_BIN_EXE_segmentti"))
            .args(&args)
            .current_dir(crate::support::root())
            .env("SEGMENTTI_JOIN_KEY", JOIN_KEY)
            .env_remove("SEGMENTTI_LOG")
            .output()
            .expect("the segmentti binary runs")
    })
    .await
    .expect("the child finished")
}

fn load(server: &TestServer, area: &str, clients: u64) {
    let base = server.base_url().as_str();
    synth(clients, 3, Synth::Server(base), &["--service-area", area]);
}

/// `run --server … --write-to each --json` plus `extra`; the output and its JSON.
async fn joined(servers: &[&str], extra: &[&str]) -> (Output, Value) {
    let mut args: Vec<String> = vec!["run".into()];
    for s in servers {
        args.extend(["--server".into(), (*s).to_owned()]);
    }
    for a in [
        "--write-to",
        "each",
        "--as-of",
        "2026-01-01",
        "--json",
        "--batch",
        "25",
    ] {
        args.push(a.into());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let output = cli(args).await;
    let json = serde_json::from_str(&text(&output).0).unwrap_or(Value::Null);
    (output, json)
}

/// The Patients of a server: id → identity code.
async fn patients(server: &TestServer) -> BTreeMap<String, String> {
    all(server, "Patient")
        .await
        .iter()
        .map(|p| {
            (
                format!("Patient/{}", p["id"].as_str().expect("id")),
                p["identifier"][0]["value"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned(),
            )
        })
        .collect()
}

/// Per identity code, the codes of a server's active Flags; every Flag must be about one of
/// the server's own Patients.
async fn flags_by_person(server: &TestServer) -> BTreeMap<String, BTreeSet<String>> {
    let people = patients(server).await;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for flag in all(server, "Flag").await {
        let subject = flag["subject"]["reference"].as_str().expect("subject");
        let code = people
            .get(subject)
            .unwrap_or_else(|| panic!("{subject} is not a Patient of {}", server.base_url()));
        if flag["status"] == "active" {
            out.entry(code.clone()).or_default().insert(
                flag["code"]["coding"][0]["code"]
                    .as_str()
                    .expect("code")
                    .to_owned(),
            );
        }
    }
    out
}

/// The subjects of `server`'s Flags.
async fn flag_subjects(server: &TestServer) -> BTreeSet<String> {
    all(server, "Flag")
        .await
        .iter()
        .map(|f| {
            f["subject"]["reference"]
                .as_str()
                .expect("subject")
                .to_owned()
        })
        .collect()
}

/// Every Observation's supporting information resolves to a resource of the same server, and
/// there is some.
async fn cites_only_its_own(server: &TestServer) {
    let mut own = BTreeSet::new();
    for kind in ["Encounter", "Condition"] {
        for r in all(server, kind).await {
            own.insert(format!("{kind}/{}", r["id"].as_str().expect("id")));
        }
    }
    let mut cited = 0;
    for o in all(server, "Observation").await {
        let supporting = o["extension"].as_array().into_iter().flatten().filter(|e| {
            e["url"] == "http://hl7.org/fhir/StructureDefinition/workflow-supportingInfo"
        });
        for d in supporting {
            let target = d["valueReference"]["reference"]
                .as_str()
                .expect("reference");
            assert!(
                own.contains(target),
                "{target} is not on {}",
                server.base_url()
            );
            cited += 1;
        }
    }
    assert!(cited > 0, "{} cites nothing", server.base_url());
}

/// The test population (or one service area's view of it) as files in `out`.
fn synth_files(out: &Path, area: Option<&str>) {
    let area = area.map(|area| ["--service-area", area]);
    synth(
        CLIENTS,
        3,
        Synth::Files(out),
        area.as_ref().map_or(&[], |a| a),
    );
}

/// Per identity code, the codes of the offline run's Flags over the whole population.
fn offline(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let input = dir.join("input");
    let out = dir.join("out");
    synth_files(&input, None);
    let run = crate::support::run_files(&input, &out, &[]);
    assert!(run.status.success(), "{:?}", text(&run));
    let codes: BTreeMap<String, String> = ndjson(&input.join("Patient.ndjson"))
        .iter()
        .map(|p| {
            (
                format!("Patient/{}", p["id"].as_str().expect("id")),
                p["identifier"][0]["value"]
                    .as_str()
                    .expect("code")
                    .to_owned(),
            )
        })
        .collect();
    let mut out_flags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for flag in ndjson(&out.join("Flag.ndjson")) {
        let subject = flag["subject"]["reference"].as_str().expect("subject");
        out_flags.entry(codes[subject].clone()).or_default().insert(
            flag["code"]["coding"][0]["code"]
                .as_str()
                .expect("code")
                .to_owned(),
        );
    }
    out_flags
}

fn targets(run: &Value) -> &Vec<Value> {
    run["models"][0]["targets"].as_array().expect("targets")
}

#[tokio::test]
async fn joined_servers_give_the_whole_populations_segments_and_a_rerun_writes_nothing() {
    let (health, social, oral) = tokio::join!(
        TestServer::start(),
        TestServer::start(),
        TestServer::start()
    );
    load(&health, "health", CLIENTS);
    load(&social, "social", CLIENTS);
    load(&oral, "oral", CLIENTS);
    let urls = [health.base_url(), social.base_url(), oral.base_url()].map(|u| u.to_string());
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();

    let (output, first) = joined(&urls, &[]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    assert_eq!(first["join"]["clients"], 90, "{first:#}");
    let several = first["join"]["in_several"].as_u64().expect("count");
    assert!(
        several > 0 && several < 90,
        "some clients are in several systems, the others in health care only: {several}"
    );
    for t in targets(&first) {
        assert!(t["outcome"]["written"].is_object(), "{t:#}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let whole = offline(dir.path());
    let on_health = flags_by_person(&health).await;
    assert_eq!(on_health, whole, "the health-care system holds everyone");
    for server in [&social, &oral] {
        let theirs = flags_by_person(server).await;
        assert!(!theirs.is_empty());
        for (person, codes) in &theirs {
            assert_eq!(
                Some(codes),
                whole.get(person),
                "the same segment everywhere"
            );
        }
    }
    for server in [&health, &social, &oral] {
        cites_only_its_own(server).await;
    }
    // Identity codes stay inside the process.
    let (stdout, stderr) = text(&output);
    let a_code = whole.keys().next().expect("a person");
    assert!(!stdout.contains(a_code.as_str()) && !stderr.contains(a_code.as_str()));

    let (output, again) = joined(&urls, &[]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    for t in targets(&again) {
        assert_wrote_nothing(&t["outcome"]["written"], &again);
    }
}

fn patient(id: &str, code: Option<&str>, replaced_by: Option<&str>) -> Value {
    let mut p = json!({"resourceType": "Patient", "id": id, "birthDate": "1950-03-01"});
    if let Some(code) = code {
        p["identifier"] = json!([{"system": "urn:oid:1.2.246.21", "value": code}]);
    }
    if let Some(target) = replaced_by {
        p["link"] =
            json!([{"other": {"reference": format!("Patient/{target}")}, "type": "replaced-by"}]);
    }
    p
}

fn visit(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": "2025-06-01T10:00:00+03:00", "end": "2025-06-01T12:00:00+03:00"}})
}

#[tokio::test]
async fn duplicates_are_reported_links_honoured_and_one_system_clients_written() {
    let (a, b) = tokio::join!(TestServer::start(), TestServer::start());
    // On A: the same person twice (d2 updated last wins), a Patient replaced by another, a
    // Patient without an identity code, and one only A holds.
    a.put(&[
        patient("d1", Some("010150-901H"), None),
        visit("e-d1", "d1"),
    ])
    .await;
    a.put(&[patient("d2", Some("010150-901H"), None)]).await;
    a.put(&[
        patient("r2", Some("020250-9021"), None),
        patient("r1", None, Some("r2")),
        visit("e-r1", "r1"),
        patient("anon", None, None),
        patient("only-a", Some("030350-903L"), None),
    ])
    .await;
    // On B: two of A's people by identity code, and A's `anon` again, known to B only by a link
    // to A's Patient.
    let mut b3 = patient("b3", None, None);
    b3["link"] = json!([{"other": {"reference": format!("{}Patient/anon", a.base_url())}, "type": "seealso"}]);
    b.put(&[
        patient("b1", Some("010150-901H"), None),
        patient("b2", Some("020250-9021"), None),
        b3,
    ])
    .await;
    let urls = [a.base_url().to_string(), b.base_url().to_string()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();

    let (output, run) = joined(&urls, &[]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    let on_a = &run["join"]["sources"][0];
    assert_eq!(on_a["patients"], 6, "{run:#}");
    assert_eq!(on_a["linked"], 1);
    assert_eq!(on_a["unjoinable"], 2, "r1 (merged into r2) and anon");
    let duplicates = on_a["duplicates"].as_array().expect("duplicates");
    assert_eq!(duplicates.len(), 1);
    assert_eq!(
        (duplicates[0]["kept"].as_str(), &duplicates[0]["skipped"]),
        (Some("d2"), &json!(["d1"]))
    );
    assert!(
        duplicates[0].get("identifier").is_none(),
        "no identity code without --show-identifiers"
    );
    assert_eq!(
        run["join"]["clients"], 4,
        "010150, 020250, anon (with b3), only-a"
    );
    assert_eq!(run["join"]["linked_across"], 1, "b3 to A's anon");
    let (stdout, stderr) = text(&output);
    assert!(!stdout.contains("010150-901H") && !stderr.contains("010150-901H"));

    let subjects = flag_subjects(&a).await;
    assert_eq!(
        subjects,
        ["Patient/anon", "Patient/d2", "Patient/only-a", "Patient/r2"]
            .map(String::from)
            .into(),
        "no Flag for the skipped duplicate d1 nor the replaced r1"
    );
    let on_b = flag_subjects(&b).await;
    assert_eq!(
        on_b,
        ["Patient/b1", "Patient/b2", "Patient/b3"]
            .map(String::from)
            .into()
    );
    // r1's emergency visit counted for r2's client, and B's Observation says it was elsewhere.
    let b2 = all(&b, "Observation")
        .await
        .into_iter()
        .find(|o| o["subject"]["reference"] == "Patient/b2")
        .expect("b2 assessed");
    let elsewhere = b2["extension"]
        .as_array()
        .expect("extensions")
        .iter()
        .find(|e| {
            e["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("supporting-info-elsewhere"))
        })
        .unwrap_or_else(|| panic!("{b2:#}"));
    assert!(
        elsewhere
            .to_string()
            .contains(urls[0].trim_end_matches('/')),
        "{elsewhere}"
    );

    let (output, shown) = joined(&urls, &["--dry-run", "--show-identifiers"]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    assert_eq!(
        shown["join"]["sources"][0]["duplicates"][0]["identifier"],
        "urn:oid:1.2.246.21|010150-901H"
    );
}

#[tokio::test]
async fn shards_of_a_joined_run_write_what_one_run_writes() {
    let (health, social) = tokio::join!(TestServer::start(), TestServer::start());
    load(&health, "health", CLIENTS);
    load(&social, "social", CLIENTS);
    let urls = [health.base_url(), social.base_url()].map(|u| u.to_string());
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();

    // Without a join key each shard process would draw its own, and choose other clients.
    let mut keyless = vec!["run", "--write-to", "each", "--shard", "0/2"];
    for url in &urls {
        keyless.extend(["--server", url]);
    }
    let refused = segmentti(&keyless);
    assert!(!refused.status.success());
    assert!(
        text(&refused).1.contains("needs the join key"),
        "{:?}",
        text(&refused)
    );

    let mut segments: BTreeMap<String, u64> = BTreeMap::new();
    let mut clients = Vec::new();
    for shard in ["0/2", "1/2"] {
        let (output, run) = joined(&urls, &["--shard", shard]).await;
        assert!(output.status.success(), "{:?}", text(&output));
        let summary = &run["models"][0]["summary"];
        clients.push(summary["clients"].as_u64().expect("clients"));
        for s in summary["segments"].as_array().expect("segments") {
            *segments.entry(s["code"].to_string()).or_default() += s["count"].as_u64().expect("n");
        }
    }
    assert_eq!(clients.iter().sum::<u64>(), 90, "{clients:?}");
    assert!(clients.iter().all(|&n| n > 0), "{clients:?}");

    // One unsharded run finds everything written, and the same segments.
    let (output, whole) = joined(&urls, &[]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    for t in targets(&whole) {
        assert_wrote_nothing(&t["outcome"]["written"], &whole);
    }
    let unsharded: BTreeMap<String, u64> = (whole["models"][0]["summary"]["segments"].as_array())
        .expect("segments")
        .iter()
        .map(|s| (s["code"].to_string(), s["count"].as_u64().expect("n")))
        .collect();
    assert_eq!(segments, unsharded);
}

#[tokio::test]
async fn a_source_down_for_reads_stops_the_run_unless_it_may_be_missing() {
    let (health, social) = tokio::join!(TestServer::start(), TestServer::start());
    load(&health, "health", 30);
    load(&social, "social", 30);
    let down = social.base_url().to_string();
    drop(social);
    let up = health.base_url().to_string();

    let (output, _) = joined(&[&up, &down], &[]).await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read {}", down.trim_end_matches('/')))
            && stderr.contains("nothing was written")
            && stderr.contains("--allow-partial"),
        "{stderr}"
    );
    assert!(
        all(&health, "Flag").await.is_empty(),
        "nothing written before every source was read"
    );

    let (output, run) = joined(&[&up, &down], &["--allow-partial", &down]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    assert!(run["sources"][1]["missing"].is_string(), "{run:#}");
    assert_eq!(targets(&run).len(), 1);
    assert!(!all(&health, "Flag").await.is_empty());
}

#[tokio::test]
async fn a_target_down_for_writes_fails_alone_and_the_exit_code_says_so() {
    let health = TestServer::start().await;
    load(&health, "health", 20);
    // A system that answers searches but fails every write: one Patient, the first person of
    // the synthetic population, under a local id of its own.
    let person = segmentti::source::synth::client(
        &segmentti::source::synth::SynthOptions {
            clients: 1,
            seed: 3,
            flavor: segmentti::source::synth::CodeFlavor::Finnish,
            as_of: "2026-01-01".parse().expect("day"),
            area: None,
            bills: segmentti::source::synth::Bills::None,
            records: false,
            shapes: false,
        },
        0,
    );
    let mut local = person.patient.clone();
    local["id"] = json!("x1");
    let mock = MockServer::start().await;
    let searchset = |resources: Vec<Value>| {
        let bundle = json!({"resourceType": "Bundle", "type": "searchset",
            "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>()});
        ResponseTemplate::new(200).set_body_raw(bundle.to_string(), "application/fhir+json")
    };
    Mock::given(method("GET"))
        .and(path("/Patient"))
        .respond_with(searchset(vec![local]))
        .mount(&mock)
        .await;
    for kind in ["/Encounter", "/Condition"] {
        Mock::given(method("GET"))
            .and(path(kind))
            .respond_with(searchset(vec![]))
            .mount(&mock)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/Flag"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&mock)
        .await;
    let broken = format!("{}/", mock.uri());

    let (output, run) = joined(&[health.base_url().as_str(), &broken], &[]).await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains(&format!("not written: {}", mock.uri())),
        "{stderr}"
    );
    let outcomes: Vec<&Value> = targets(&run).iter().map(|t| &t["outcome"]).collect();
    assert_eq!(outcomes[0]["written"]["observations"], 20, "{run:#}");
    assert!(outcomes[1]["failed"].is_string(), "{run:#}");
    assert_eq!(all(&health, "Observation").await.len(), 20);
}

/// The benchmark of issue 9: three servers, one population spread over them; prints each
/// source's read rate, each target's write rate and the process's memory right after the join,
/// for a first run and an idempotent rerun, at each size of `SEGMENTTI_MULTI_CLIENTS` (a comma
/// list, default `10000`; fresh servers for each size). Memory per client at two sizes shows
/// whether the join stays O(clients). Minutes of loading, so:
/// `SEGMENTTI_MULTI_CLIENTS=1000,3000 cargo test --test it multi::benchmark -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a benchmark: loading the servers takes minutes"]
async fn benchmark_three_servers() {
    let sizes = std::env::var("SEGMENTTI_MULTI_CLIENTS").unwrap_or_else(|_| "10000".into());
    let mut memory = Vec::new();
    for clients in sizes.split(',').map(str::trim) {
        let clients = clients
            .parse()
            .expect("SEGMENTTI_MULTI_CLIENTS: numbers of clients");
        memory.push((clients, benchmark_size(clients).await));
    }
    // Resident memory holds what the allocator kept of freed pages too, so the slope between
    // two sizes says more than either figure alone.
    println!("== the join's memory (first run; resident right after the join, and peak)");
    for (clients, (after_join, peak)) in memory {
        println!(
            "  {clients} clients: {:.1} MiB after the join, peak {:.1} MiB",
            after_join / 1048576.0,
            peak / 1048576.0
        );
    }
}

/// One size of [`benchmark_three_servers`]; the first run's resident bytes right after the join
/// and at its peak.
async fn benchmark_size(clients: u64) -> (f64, f64) {
    // One at a time: three starting at once on a loaded 2-core machine can miss the harness's
    // 60 s readiness limit.
    let (health, social, oral) = (
        TestServer::start().await,
        TestServer::start().await,
        TestServer::start().await,
    );
    let servers = [(&health, "health"), (&social, "social"), (&oral, "oral")];
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for (server, area) in servers {
            scope.spawn(move || load(server, area, clients));
        }
    });
    println!(
        "loaded {clients} clients over 3 servers in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        crate::harness::hfs_binary().display()
    );
    let urls: Vec<String> = servers
        .iter()
        .map(|(s, _)| s.base_url().to_string())
        .collect();
    let mut memory = (0.0, 0.0);
    for pass in ["first run", "rerun"] {
        let mut args: Vec<String> = vec!["run".into()];
        for u in &urls {
            args.extend(["--server".into(), u.clone()]);
        }
        args.extend(["--write-to", "each", "--as-of", "2026-01-01", "--stats"].map(String::from));
        let started = std::time::Instant::now();
        let output = cli(args).await;
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        println!(
            "== {clients} clients, {pass}: {:.1} s\n{stdout}",
            started.elapsed().as_secs_f64()
        );
        if pass == "rerun" {
            let targets = stdout.lines().filter(|l| l.starts_with("stats: target="));
            assert!(
                targets.clone().count() == 3 && targets.clone().all(|l| l.contains(" written=0 ")),
                "a rerun writes nothing:\n{stdout}"
            );
        } else {
            let stats = stdout
                .lines()
                .find_map(|l| l.strip_prefix("stats: clients="))
                .expect("a stats: line with the join's memory");
            let field = |name: &str| -> f64 {
                stats
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} in {stats}"))
            };
            memory = (field("rss_after_join_bytes"), field("peak_rss_bytes"));
        }
    }
    memory
}

/// Per identity code, the person's local Patient id in one area's synthetic files.
fn local_ids(dir: &Path) -> BTreeMap<String, String> {
    ndjson(&dir.join("Patient.ndjson"))
        .iter()
        .map(|p| {
            let code = p["identifier"][0]["value"].as_str().expect("code");
            (code.to_owned(), p["id"].as_str().expect("id").to_owned())
        })
        .collect()
}

/// How many Encounters of one area's files refer to `patient`.
fn contacts(dir: &Path, patient: &str) -> usize {
    let subject = format!("Patient/{patient}");
    ndjson(&dir.join("Encounter.ndjson"))
        .iter()
        .filter(|e| e["subject"]["reference"] == subject.as_str())
        .count()
}

#[test]
fn explain_shows_a_joined_client_with_the_sources_that_hold_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let areas = ["health", "social", "oral"];
    let mut inputs = Vec::new();
    for area in areas {
        let out = dir.path().join(area);
        synth_files(&out, Some(area));
        inputs.push(out);
    }
    let whole = offline(&dir.path().join("whole"));
    let ids: Vec<BTreeMap<String, String>> = inputs.iter().map(|d| local_ids(d)).collect();
    // A person with contacts in the health and the social-welfare files: light in each, maybe.
    let (code, health_id) = (ids[0].iter())
        .find(|(code, id)| {
            contacts(&inputs[0], id) > 0
                && ids[1]
                    .get(*code)
                    .is_some_and(|social| contacts(&inputs[1], social) > 0)
        })
        .expect("a person with health and social-welfare contacts");
    let names: Vec<String> = inputs.iter().map(|d| d.display().to_string()).collect();
    let explain = |patient: &str, json: bool| {
        let mut args = vec!["explain", "--as-of", "2026-01-01", "--patient", patient];
        for name in &names {
            args.extend(["--input", name.as_str()]);
        }
        if json {
            args.push("--json");
        }
        segmentti(&args)
    };

    let output = explain(health_id, true);
    assert!(output.status.success(), "{:?}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!stdout.contains(code.as_str()), "an identity code leaked");
    let explained: Value = serde_json::from_str(&stdout).expect("JSON");
    let first = &explained[0];
    let segment = first["segment"].as_str().expect("segment");
    assert!(
        whole[code].contains(segment),
        "joined explain says {segment}, the whole population's run {:?}",
        whole[code]
    );
    let held: Vec<(String, String)> = (first["held_by"].as_array().expect("held_by"))
        .iter()
        .map(|h| {
            let field = |k: &str| h[k].as_str().expect("string").to_owned();
            (field("source"), field("patient"))
        })
        .collect();
    let expected: Vec<(String, String)> = (0..areas.len())
        .filter_map(|a| Some((names[a].clone(), ids[a].get(code)?.clone())))
        .collect();
    assert_eq!(held, expected);
    let cited: BTreeSet<&str> = (first["evidence"].as_array().expect("evidence"))
        .iter()
        .map(|e| e["source"].as_str().expect("every line names its source"))
        .collect();
    assert!(
        cited.contains(names[0].as_str()) && cited.contains(names[1].as_str()),
        "evidence from both sources: {cited:?}"
    );

    let social = format!("{}/Patient/{}", names[1], ids[1][code]);
    let text_form = explain(&social, false);
    assert!(text_form.status.success(), "{:?}", text(&text_form));
    let shown = String::from_utf8_lossy(&text_form.stdout);
    assert!(
        shown.contains("Held by:")
            && shown.contains(&format!("{}  Patient/{}", names[0], health_id))
    );
    assert!(shown.contains(&format!("Segment {segment}:")), "{shown}");
    assert!(!shown.contains(code.as_str()), "an identity code leaked");

    let missing = explain("nobody", false);
    assert!(!missing.status.success());
    let (_, stderr) = text(&missing);
    assert!(
        stderr.contains("Patient/nobody is in none of the sources"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_death_recorded_in_one_system_ends_the_flags_in_every_system_that_holds_the_client() {
    let (a, b) = tokio::join!(TestServer::start(), TestServer::start());
    a.put(&[
        patient("pa", Some("040450-904N"), None),
        visit("e-pa", "pa"),
    ])
    .await;
    b.put(&[
        patient("pb", Some("040450-904N"), None),
        visit("e-pb", "pb"),
    ])
    .await;
    let urls = [a.base_url().to_string(), b.base_url().to_string()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let (output, _) = joined(&urls, &[]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    let active = |flags: &[Value]| flags.iter().filter(|f| f["status"] == "active").count();
    assert!(active(&all(&a, "Flag").await) >= 1);
    assert!(active(&all(&b, "Flag").await) >= 1);

    let mut died = patient("pa", Some("040450-904N"), None);
    died["deceasedDateTime"] = json!("2025-12-01");
    a.put(&[died]).await;
    let (output, _) = joined(&urls, &[]).await;
    assert!(output.status.success(), "{:?}", text(&output));
    for server in [&a, &b] {
        let flags = all(server, "Flag").await;
        assert_eq!(active(&flags), 0, "{}: {flags:#?}", server.base_url());
        assert!(
            flags.iter().all(|f| f["extension"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x["valueCode"] == "deceased"))),
            "{flags:#?}"
        );
    }
}
