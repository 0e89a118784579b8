//! Abuse suite: input bounds (issue 24, findings 3, 4, 9 and 13). Each hostile input is run
//! through the real binary, small, and shown to cost bounded time and memory, to be named by
//! file and line, and to leave the rest of the input read: a megabyte-long code, over-long
//! lines, a line with no end, a gzip bomb, a YAML alias bomb and symbolic-link loops.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{fixture, ndjson, root, text};

/// What one run of the binary cost.
struct Measured {
    output: Output,
    took: Duration,
    /// The peak resident set size (`VmHWM`, a high-water mark, polled until the process ends).
    peak_bytes: u64,
}

impl Measured {
    /// The bound of every case here: seconds where the finding took minutes or never ended.
    fn assert_quick(&self) {
        assert!(self.took < Duration::from_secs(5), "took {:?}", self.took);
    }

    /// Quick, and within `mib` MiB of memory where the finding took gigabytes.
    fn assert_bounded(&self, mib: u64) {
        self.assert_quick();
        let peak = self.peak_bytes / MIB as u64;
        assert!(peak < mib, "peak {peak} MiB");
    }
}

/// Runs `segmentti args` as [`crate::support::segmentti`] does, measured; killed after 60 s, so
/// that a read that never ends fails the test instead of hanging it.
fn measured(args: &[&str]) -> Measured {
    let logs = tempfile::tempdir().expect("tempdir");
    let file = |name: &str| std::fs::File::create(logs.path().join(name)).expect("log file");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_segmentti"))
        .args(args)
        .current_dir(root())
        .env_remove("SEGMENTTI_LOG")
        .stdout(Stdio::from(file("stdout")))
        .stderr(Stdio::from(file("stderr")))
        .spawn()
        .expect("the segmentti binary runs");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_bytes = 0;
    let status = loop {
        if let Some(kb) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        }) {
            peak_bytes = peak_bytes.max(kb * 1024);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().expect("kill");
            panic!("segmentti {args:?} did not end in 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |name: &str| std::fs::read(logs.path().join(name)).expect("log");
    Measured {
        output: Output {
            status,
            stdout: read("stdout"),
            stderr: read("stderr"),
        },
        took: started.elapsed(),
        peak_bytes,
    }
}

/// `run --input INPUT --as-of 2026-01-01 --out OUT` plus `extra`, measured.
fn run(input: &Path, out: &Path, extra: &[&str]) -> Measured {
    let (input, out) = (input.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let mut args = vec![
        "run",
        "--input",
        input,
        "--as-of",
        "2026-01-01",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    measured(&args)
}

/// The offline fixture's three clients, copied into `dir/in`.
fn three_clients(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir(&input).expect("mkdir");
    for name in ["Patient", "Encounter", "Condition"] {
        let from = fixture(&format!("offline/basic/{name}.ndjson"));
        std::fs::copy(from, input.join(format!("{name}.ndjson"))).expect("copy");
    }
    input
}

/// Each client's segment in a run's Observations.
fn segments(out: &Path) -> Vec<(String, String)> {
    let mut segments: Vec<(String, String)> = ndjson(&out.join("Observation.ndjson"))
        .iter()
        .map(|o| {
            let code = &o["valueCodeableConcept"]["coding"][0]["code"];
            (o["subject"]["reference"].to_string(), code.to_string())
        })
        .collect();
    segments.sort();
    segments
}

fn append(file: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .expect("open");
    f.write_all(bytes).expect("append");
}

fn condition(id: &str, patient: &str, code: &str) -> Value {
    json!({"resourceType": "Condition", "id": id, "subject": {"reference": format!("Patient/{patient}")},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "urn:oid:1.2.246.537.6.1", "code": code}]}})
}

const MIB: usize = 1 << 20;

#[test]
fn issue_24_a_megabyte_long_code_is_matched_in_linear_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_clients(dir.path());
    let out = dir.path().join("out");
    // ICD-10 F3 (mood disorders) lists by prefix; this code has it, and 1.28 MB after it. Every
    // one of its prefixes was hashed: 69 s in a release build.
    let code = format!("F3{}", "9".repeat(1_280_000));
    let line = condition("long-code", "p2", &code).to_string() + "\n";
    append(&input.join("Condition.ndjson"), line.as_bytes());
    let run = run(&input, &out, &[]);
    assert_eq!(run.output.status.code(), Some(0), "{:?}", text(&run.output));
    run.assert_quick();
    let p2 = segments(&out)
        .into_iter()
        .find(|(subject, _)| subject.contains("Patient/p2"));
    assert_eq!(
        p2.map(|(_, segment)| segment),
        Some("\"2\"".to_owned()),
        "the long code still matches its listed prefix F3 (p2 is in segment 1 without it)"
    );
}

#[test]
fn issue_24_over_long_lines_are_located_rejects_and_the_rest_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_clients(dir.path());
    let out = dir.path().join("out");
    let marker = "LONGLINECONTENT";
    let long = condition("long", "p1", &marker.repeat(5 * MIB / marker.len())).to_string();
    // A 5 MB line between two of the file's lines, and one with no newline at the end of
    // another file (the reader buffered it whole and searched it again on every read).
    let conditions = std::fs::read_to_string(input.join("Condition.ndjson")).expect("read");
    let (first, rest) = conditions.split_once('\n').expect("lines");
    let conditions = format!("{first}\n{long}\n{rest}");
    std::fs::write(input.join("Condition.ndjson"), conditions).expect("write");
    append(&input.join("Patient.ndjson"), long.as_bytes());
    let limit = MIB.to_string();
    let run = run(&input, &out, &["--max-line-bytes", &limit]);
    let (stdout, stderr) = text(&run.output);
    assert_eq!(run.output.status.code(), Some(3), "{stdout}\n{stderr}");
    let rejected = ndjson(&out.join("rejected.ndjson"));
    let located: Vec<(String, String)> = rejected
        .iter()
        .map(|r| (r["origin"].to_string(), r["reason"].to_string()))
        .collect();
    let reason = format!("line longer than {MIB} bytes");
    assert_eq!(located.len(), 2, "{located:#?}");
    assert!(
        located[0].0.ends_with("Condition.ndjson:2\"") && located[0].1.contains(&reason),
        "{located:#?}"
    );
    assert!(
        located[1].0.ends_with("Patient.ndjson:4\"") && located[1].1.contains(&reason),
        "{located:#?}"
    );
    let everything = format!("{stdout}{stderr}{rejected:?}");
    assert!(
        !everything.contains(marker),
        "a rejected line's content is never echoed"
    );
    assert_eq!(
        segments(&out).len(),
        3,
        "the lines after the long one are read"
    );
    run.assert_bounded(128);
}

#[test]
fn issue_24_a_line_with_no_end_is_read_once_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_clients(dir.path());
    let out = dir.path().join("out");
    // 256 MB with no newline took 11 s and 434 MB: every read searched the whole line again.
    // Within the default limit (64 MiB) the line is held, and past it dropped as it arrives.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(input.join("Encounter.ndjson"))
        .expect("open");
    let piece = vec![b'x'; 4 * MIB];
    for _ in 0..64 {
        f.write_all(&piece).expect("write");
    }
    drop(f);
    let run = run(&input, &out, &[]);
    let (stdout, stderr) = text(&run.output);
    assert_eq!(run.output.status.code(), Some(3), "{stdout}\n{stderr}");
    let rejected = ndjson(&out.join("rejected.ndjson"));
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert!(
        rejected[0]["origin"]
            .as_str()
            .is_some_and(|o| o.ends_with("Encounter.ndjson:27"))
    );
    assert_eq!(segments(&out).len(), 3);
    run.assert_bounded(256);
}

#[test]
fn issue_24_a_gzip_bomb_stops_at_the_cap_with_the_file_and_line() {
    use flate2::{Compression, write::GzEncoder};
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_clients(dir.path());
    let out = dir.path().join("out");
    // Two real lines, then 1 GiB of zeros with no newline in a file of about a megabyte: one
    // gzip member of 1 MiB of zeros, repeated (a reader decompresses them as one stream).
    let gzip = |bytes: &[u8]| {
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(bytes).expect("gzip");
        gz.finish().expect("gzip")
    };
    let conditions = std::fs::read(input.join("Condition.ndjson")).expect("read");
    let first_line = conditions.iter().position(|&b| b == b'\n').expect("a line") + 1;
    let mut bomb = gzip(&conditions[..first_line]);
    bomb.extend(gzip(&[b'0'; MIB]).repeat(1024));
    let bomb_file = input.join("Bomb.ndjson.gz");
    std::fs::write(&bomb_file, &bomb).expect("write");
    assert!(bomb.len() < 2 * MIB, "{} bytes", bomb.len());
    let cap = (64 * MIB).to_string();
    let run = run(&input, &out, &["--max-decompressed-bytes", &cap]);
    let (stdout, stderr) = text(&run.output);
    assert!(!run.output.status.success(), "{stdout}\n{stderr}");
    let expected = format!(
        "{} expands to more than {cap} bytes (stopped at line 2)",
        bomb_file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("--max-decompressed-bytes"), "{stderr}");
    run.assert_bounded(256);
}

#[test]
fn issue_24_a_yaml_alias_bomb_is_refused_where_it_starts_before_it_expands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("bomb.yaml");
    // Nine levels of ten aliases each: 10^9 values from 370-odd bytes (1.1 GB before).
    let mut yaml = String::from(
        "id: bomb\na: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let row = vec![format!("*{}", pair[0]); 10].join(",");
        yaml.push_str(&format!("{}: &{} [{row}]\n", pair[1], pair[1]));
    }
    assert!(yaml.len() < 400, "{} bytes", yaml.len());
    std::fs::write(&model, &yaml).expect("write");
    let run = measured(&["check-mapping", model.to_str().expect("utf-8")]);
    let (stdout, stderr) = text(&run.output);
    assert!(!run.output.status.success(), "{stdout}\n{stderr}");
    // `f:` (line 7) is where the aliases pass 250 000 values.
    let expected = format!("{}:7:", model.display());
    assert!(
        stderr.contains(&expected) && stderr.contains("more than 250000 values"),
        "{stderr}"
    );
    run.assert_bounded(128);
}

#[test]
fn issue_24_directory_links_are_not_followed_so_loops_end_and_nothing_is_read_twice() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_clients(dir.path());
    let out = dir.path().join("out");
    // A link to the parent (the same files about 40 times before), and two links to each
    // other's directories (which never ended).
    std::fs::create_dir_all(input.join("a")).expect("mkdir");
    std::fs::create_dir_all(input.join("b")).expect("mkdir");
    symlink(&input, input.join("a/up")).expect("link");
    symlink(input.join("b"), input.join("a/to-b")).expect("link");
    symlink(input.join("a"), input.join("b/to-a")).expect("link");
    // A link to a file is followed, but a file is read once however many paths lead to it.
    std::fs::rename(input.join("Patient.ndjson"), input.join("a/Patient.ndjson")).expect("mv");
    symlink(input.join("a/Patient.ndjson"), input.join("Patient.ndjson")).expect("link");
    let run = run(&input, &out, &[]);
    let (stdout, stderr) = text(&run.output);
    assert_eq!(run.output.status.code(), Some(0), "{stdout}\n{stderr}");
    run.assert_quick();
    assert_eq!(segments(&out).len(), 3, "each client once");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("json");
    assert_eq!(
        summary["resources"],
        json!({"Condition": 5, "Encounter": 26, "Patient": 3}),
        "every line read once"
    );
    for link in ["a/up", "a/to-b", "b/to-a"] {
        let named = input.join(link).display().to_string();
        assert!(
            stderr.contains(&named),
            "the skipped {link} is named: {stderr}"
        );
    }
}

#[test]
fn issue_24_a_bundle_file_over_the_limit_is_a_located_reject_and_the_other_files_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = three_clients(dir.path());
    let out = dir.path().join("out");
    let marker = "BUNDLECONTENT";
    let entry = json!({"resource": condition("big", "p1", &marker.repeat(2 * MIB / marker.len()))});
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [entry]});
    std::fs::write(input.join("Big.json"), bundle.to_string()).expect("write");
    let limit = MIB.to_string();
    let run = run(&input, &out, &["--max-line-bytes", &limit]);
    let (stdout, stderr) = text(&run.output);
    assert_eq!(run.output.status.code(), Some(3), "{stdout}\n{stderr}");
    let rejected = ndjson(&out.join("rejected.ndjson"));
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert!(
        rejected[0]["origin"]
            .as_str()
            .is_some_and(|o| o.ends_with("Big.json:1"))
            && rejected[0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("over the limit of one document")),
        "{rejected:#?}"
    );
    assert!(!format!("{stdout}{stderr}{rejected:?}").contains(marker));
    assert_eq!(segments(&out).len(), 3, "the other files are read");
}
