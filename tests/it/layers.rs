//! The layer rule of `ARCHITECTURE.md`, held against the code: a module of `src/` imports only
//! from its own layer or the layers below, and the modules of one layer import each other without
//! a cycle. The table is read from `ARCHITECTURE.md` itself, so the document and the code cannot
//! drift apart: a new top-level module must be given a layer there before this test passes.
//!
//! What counts as an import is every `crate::name` (and, in the binary, `segmentti::name`)
//! outside comments and before a file's `#[cfg(test)]` module: a unit test may reach up for a
//! population to test with, as a dev-dependency would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::root;

/// Module name → layer number, from the first table of `ARCHITECTURE.md` whose header starts
/// with `| layer |`: each row's second cell names the modules, each in backticks (`fhir/`).
fn layers() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut table = BTreeMap::new();
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("| layer |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let layer: usize = cells[1]
            .parse()
            .expect("a layer number in the first column");
        for name in cells[2].split('`').skip(1).step_by(2) {
            let name = name.trim_end_matches('/').trim_end_matches(".rs");
            table.insert(name.to_owned(), layer);
        }
    }
    assert!(
        !table.is_empty(),
        "ARCHITECTURE.md has no `| layer |` table"
    );
    table
}

/// The top-level module a file of `src/` belongs to (`cli` for the binary's own files).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root().join("src")).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" => None,
        "main.rs" => Some("cli".to_owned()),
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// Every `prefix::name` in the code of `text` (comments and the test module left out), with
/// its line number.
fn imports(text: &str, prefixes: &[&str]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or_default();
        for prefix in prefixes {
            for (at, _) in code.match_indices(prefix) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let name: String = code[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push((n + 1, name));
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `module → modules it imports`, and every import that goes up a layer.
fn graph(layers: &BTreeMap<String, usize>) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let (mut edges, mut upward) = (BTreeMap::<String, BTreeSet<String>>::new(), Vec::new());
    for file in files {
        let Some(from) = module_of(&file) else {
            continue;
        };
        let Some(&from_layer) = layers.get(&from) else {
            upward.push(format!("src/{from} has no layer in ARCHITECTURE.md"));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("source file");
        let file = file.strip_prefix(root()).unwrap_or(&file).to_owned();
        let prefixes: &[&str] = if from == "cli" {
            &["crate::", "segmentti::"]
        } else {
            &["crate::"]
        };
        for (line, to) in imports(&text, prefixes) {
            if from == "cli" && !layers.contains_key(&to) {
                continue; // the binary's own modules (`crate::cli`, `super`)
            }
            let Some(&to_layer) = layers.get(&to) else {
                upward.push(format!(
                    "{}:{line}: crate::{to} has no layer",
                    file.display()
                ));
                continue;
            };
            if to == from {
                continue;
            }
            if to_layer > from_layer {
                upward.push(format!(
                    "{}:{line}: {from} (layer {from_layer}) imports {to} (layer {to_layer})",
                    file.display()
                ));
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }
    (edges, upward)
}

#[test]
fn every_import_points_down_the_layers_of_architecture_md() {
    let layers = layers();
    let (_, upward) = graph(&layers);
    assert!(
        upward.is_empty(),
        "imports against ARCHITECTURE.md:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let (edges, _) = graph(&layers());
    // Depth-first: a module met again while still on the path closes a cycle.
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for next in edges.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        let cycle = visit(m, &edges, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap_or_default().join(" → ")
        );
    }
}

#[test]
fn every_module_of_src_has_a_layer_and_every_layer_module_exists() {
    let layers = layers();
    for name in layers.keys() {
        let dir = root().join("src").join(name);
        let file = root().join("src").join(format!("{name}.rs"));
        assert!(
            dir.is_dir() || file.is_file(),
            "ARCHITECTURE.md names `{name}`, which src/ does not have"
        );
    }
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for file in files {
        if let Some(m) = module_of(&file) {
            assert!(
                layers.contains_key(&m),
                "src/{m} has no layer in ARCHITECTURE.md"
            );
        }
    }
}

#[test]
fn the_scanner_sees_imports_and_skips_comments_and_tests() {
    let text = "use crate::fhir::Day;\n// crate::run\n/// [`crate::serve`]\nlet x = crate::model::plan(); // crate::cli\nfoo::crate::bar;\n#[cfg(test)]\nuse crate::run;\n";
    let found: Vec<String> = imports(text, &["crate::"])
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(found, ["fhir", "model"]);
}
