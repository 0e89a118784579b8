//! The Kubernetes manifests in `docker/k8s/` run what they say: their container arguments,
//! with `$(JOB_COMPLETION_INDEX)` and `$(AS_OF)` filled in as Kubernetes would and the volumes
//! mapped to a temporary directory, go through the three steps of a sharded run, and the shards'
//! output together equals one unsharded run. (No cluster here: this runs the same binary with
//! the same arguments; `kubernetes-validate --strict` checked the manifests' schema.)

use std::collections::BTreeSet;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{Synth, root, run_files, segmentti, synth, text};

/// The container's `args` and `env` of a Job manifest, and its `completions`.
fn job(file: &str) -> (Vec<String>, Vec<(String, String)>, u64) {
    let text = std::fs::read_to_string(root().join("docker/k8s").join(file)).expect("manifest");
    let doc = &YamlLoader::load_from_str(&text).expect("YAML")[0];
    let spec = &doc["spec"];
    let container = &spec["template"]["spec"]["containers"][0];
    let args = container["args"]
        .as_vec()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();
    let env = container["env"]
        .as_vec()
        .map(|v| {
            v.iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().expect("env").to_owned();
                    (s("name"), s("value"))
                })
                .collect()
        })
        .unwrap_or_default();
    let completions = match &spec["completions"] {
        Yaml::Integer(n) => u64::try_from(*n).expect("positive"),
        _ => 1,
    };
    (args, env, completions)
}

/// The arguments as the pod would run them, with the volumes under `data`.
fn resolve(args: &[String], env: &[(String, String)], index: u64, data: &Path) -> Vec<String> {
    args.iter()
        .map(|a| {
            let mut a = a.replace("$(JOB_COMPLETION_INDEX)", &index.to_string());
            for (name, value) in env {
                a = a.replace(&format!("$({name})"), value);
            }
            a.replace("/data", data.to_str().expect("utf-8")).replace(
                "/mappings",
                root().join("mappings").to_str().expect("utf-8"),
            )
        })
        .collect()
}

fn ok(args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = segmentti(&args);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{args:?}\n{stdout}\n{stderr}");
}

#[test]
fn the_manifests_three_steps_give_what_one_run_gives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    let export = data.join("export");
    synth(800, 21, Synth::Files(&export), &[]);
    std::fs::create_dir_all(data.join("thresholds")).expect("thresholds dir");
    let (args, env, n) = job("thresholds-job.yaml");
    assert_eq!(n, 8);
    for k in 0..n {
        ok(&resolve(&args, &env, k, data));
    }
    let (args, env, _) = job("merge-job.yaml");
    ok(&resolve(&args, &env, 0, data));
    let (args, env, n) = job("shards-job.yaml");
    for k in 0..n {
        ok(&resolve(&args, &env, k, data));
    }
    let whole = data.join("whole");
    let output = run_files(&export, &whole, &["--progress", "off"]);
    assert!(output.status.success(), "{:?}", text(&output));
    for file in ["Observation.ndjson", "Flag.ndjson"] {
        let lines = |d: &Path| -> BTreeSet<String> {
            std::fs::read_to_string(d.join(file))
                .expect("output")
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let shards: BTreeSet<String> = (0..n)
            .flat_map(|k| lines(&data.join("out").join(format!("shard-{k}"))))
            .collect();
        assert_eq!(shards, lines(&whole), "{file}");
    }
}
