//! The layer rule of `ARCHITECTURE.md`, held against the code: a module of `src/` imports only
//! from its own layer or the layers below, and the modules of one layer import each other without
//! a cycle, nor do the files within one module. The table is read from `ARCHITECTURE.md` itself, so the document and the code cannot
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
                let rest = &code[at + prefix.len()..];
                let names = match rest.strip_prefix('{') {
                    Some(group) => group_names(group),
                    None => vec![ident(rest)],
                };
                found.extend(
                    (names.into_iter())
                        .filter(|name| !name.is_empty())
                        .map(|name| (n + 1, name)),
                );
            }
        }
    }
    found
}

/// The identifier `text` starts with.
fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The first name of each item of a `{a, b::c, d::{e, f}}` group, `text` starting after its
/// `{`: `a`, `b`, `d`. A group that goes on past its line is read as far as the line goes.
fn group_names(text: &str) -> Vec<String> {
    let (mut names, mut depth, mut item_start) = (Vec::new(), 0, true);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                names.push(ident(&text[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    names
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

/// A cycle of `edges`, when there is one: depth-first, a node met again while still on the
/// path closes it.
fn first_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let (edges, _) = graph(&layers());
    let cycle = first_cycle(&edges);
    assert!(
        cycle.is_none(),
        "import cycle: {}",
        cycle.unwrap_or_default().join(" → ")
    );
}

/// Within each directory of `src/`, the files beside its `mod.rs` import each other (as
/// `super::name` or `crate::dir::name`) without a cycle either: a module's own files are
/// layered too, so each can be read knowing only those it imports.
#[test]
fn the_files_of_one_module_import_each_other_without_a_cycle() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut dirs: BTreeMap<std::path::PathBuf, Vec<std::path::PathBuf>> = BTreeMap::new();
    for file in files {
        let dir = file.parent().expect("a directory").to_owned();
        dirs.entry(dir).or_default().push(file);
    }
    let mut checked = 0;
    for (dir, files) in &dirs {
        let rel = dir.strip_prefix(root().join("src")).expect("under src/");
        if rel.as_os_str().is_empty() {
            continue; // lib.rs and main.rs: the top-level modules are the other tests'
        }
        let path: Vec<&str> = rel.iter().map(|c| c.to_str().expect("utf-8")).collect();
        let own = format!("crate::{}::", path.join("::"));
        let name = |f: &Path| f.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
        let siblings: BTreeSet<String> = (files.iter())
            .filter_map(|f| name(f))
            .chain(
                (std::fs::read_dir(dir).expect("dir"))
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .filter_map(|p| name(&p)),
            )
            .filter(|n| n != "mod")
            .collect();
        let mut edges = BTreeMap::<String, BTreeSet<String>>::new();
        for file in files {
            let Some(from) = name(file).filter(|n| n != "mod") else {
                continue;
            };
            let text = std::fs::read_to_string(file).expect("source file");
            let to = (imports(&text, &["super::", &own]).into_iter())
                .map(|(_, to)| to)
                .filter(|to| *to != from && siblings.contains(to))
                .collect::<Vec<_>>();
            edges.entry(from).or_default().extend(to);
        }
        checked += edges.values().filter(|e| !e.is_empty()).count();
        let cycle = first_cycle(&edges);
        assert!(
            cycle.is_none(),
            "import cycle within src/{}: {}",
            rel.display(),
            cycle.unwrap_or_default().join(" → ")
        );
    }
    assert!(
        checked > 20,
        "the files of src/'s modules import each other: {checked}"
    );
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
    let group =
        "use super::{check, valueset::{self, Reader}, yaml};\nuse crate::{run, sink::Sink};";
    let found: Vec<String> = imports(group, &["super::", "crate::"])
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(found, ["check", "valueset", "yaml", "run", "sink"]);
}
