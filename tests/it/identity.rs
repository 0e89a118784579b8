//! The embedded default's output, byte for byte. Every shipped model runs on the built-in
//! population, and each file it writes is hashed and held against the digests committed in
//! `tests/it/identity.sha256`. A change of layout or speed leaves them as they are; a change meant
//! to alter what is written runs this test with `SEGMENTTI_BLESS=1`, which rewrites the file, and
//! says why in the same commit.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::support::{root, segmentti, text};

const MODELS: [&str; 5] = [
    "mappings/paijat-sote.yaml",
    "mappings/nylander.yaml",
    "mappings/suuntima.yaml",
    "mappings/virta.yaml",
    "mappings/helsinki-oral-health.yaml",
];

/// `sha256  path` for every file below `dir`, sorted by path, as `sha256sum` prints them.
fn digests(dir: &Path) -> String {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("output directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files.iter().fold(String::new(), |mut out, path| {
        let bytes = std::fs::read(path).expect("output file");
        let name = path.strip_prefix(dir).expect("below the output");
        let _ = writeln!(out, "{:x}  {}", Sha256::digest(&bytes), name.display());
        out
    })
}

#[test]
fn every_model_on_the_embedded_default_writes_what_it_always_wrote() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["run", "--out", out.path().to_str().expect("utf-8")];
    for model in MODELS {
        args.extend(["--model", model]);
    }
    let output = segmentti(&args);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let got = digests(out.path());
    let committed = root().join("tests/it/identity.sha256");
    if std::env::var_os("SEGMENTTI_BLESS").is_some() {
        std::fs::write(&committed, &got).expect("write the digests");
    }
    let want = std::fs::read_to_string(&committed).expect("tests/it/identity.sha256");
    assert_eq!(
        got, want,
        "the embedded default's output changed; if that is meant, bless it (module docs)"
    );
}
