//! FHIR packages a model's code lists may name ValueSets from by canonical URL
//! (`valueset: http://example.org/fhir/ValueSet/heart-failure`, or `…|1.2.0` for one version),
//! as FHIR tooling resolves canonicals from the packages it is given. This module owns reading
//! a package (an npm `.tgz` as published, or its unpacked folder) into an index of its
//! ValueSets by canonical, and the process-wide set of packages the command line gave
//! (`--package`). It reads only ValueSets and never the network: [`super::valueset`] turns what
//! it finds into code list entries exactly as for a file beside the model.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

/// A package that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The file or folder cannot be read.
    #[error("cannot read the FHIR package {}: {source}\nhint: give a package .tgz (as `npm pack` or a registry makes it) or its unpacked folder", .path.display())]
    Io {
        /// The package.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Two packages give one canonical and version different contents.
    #[error("ValueSet {canonical} is in both {} and {}\nhint: give only one of the packages, or name the version (`{canonical}|VERSION`)", .first.display(), .second.display())]
    Conflict {
        /// The canonical and version.
        canonical: String,
        /// Where it was found first.
        first: PathBuf,
        /// Where again.
        second: PathBuf,
    },
}

/// The ValueSets of some FHIR packages, by canonical URL and by `url|version`.
#[derive(Debug, Default)]
pub struct Packages {
    valuesets: BTreeMap<String, Found>,
    names: Vec<PathBuf>,
}

#[derive(Debug)]
struct Found {
    /// The package, and the file inside it.
    at: PathBuf,
    text: String,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    url: Option<String>,
    version: Option<String>,
}

static GIVEN: OnceLock<Packages> = OnceLock::new();

/// Makes `packages` the ones every model loaded by this process resolves canonicals from
/// (`given`); the command line calls this once, before it loads a model. A second call is
/// ignored.
pub fn give(packages: Packages) {
    let _ = GIVEN.set(packages);
}

/// The packages the command line gave, or none.
pub(crate) fn given() -> &'static Packages {
    GIVEN.get_or_init(Packages::default)
}

/// Whether a `valueset:` names a canonical URL rather than a file.
pub(crate) fn is_canonical(name: &str) -> bool {
    name.starts_with("http://") || name.starts_with("https://") || name.starts_with("urn:")
}

impl Packages {
    /// Reads each package: a `.tgz` or `.tar.gz` archive, or a folder (its `package/`
    /// subfolder when it has one).
    pub fn read(paths: &[PathBuf]) -> Result<Packages, PackageError> {
        let mut packages = Packages::default();
        for path in paths {
            let io = |source| PackageError::Io {
                path: path.clone(),
                source,
            };
            let files = if path.is_dir() {
                folder_files(path).map_err(io)?
            } else {
                archive_files(path).map_err(io)?
            };
            for (at, text) in files {
                packages.add(path, at, text)?;
            }
            packages.names.push(path.clone());
        }
        Ok(packages)
    }

    fn add(&mut self, package: &Path, at: PathBuf, text: String) -> Result<(), PackageError> {
        let Ok(head) = serde_json::from_str::<Head>(&text) else {
            return Ok(());
        };
        let (Some("ValueSet"), Some(url)) = (head.resource_type.as_deref(), head.url) else {
            return Ok(());
        };
        let keys = std::iter::once(url.clone()).chain(head.version.map(|v| format!("{url}|{v}")));
        for key in keys {
            if let Some(first) = self.valuesets.get(&key) {
                if first.text != text {
                    return Err(PackageError::Conflict {
                        canonical: key,
                        first: first.at.clone(),
                        second: package.join(&at),
                    });
                }
                continue;
            }
            self.valuesets.insert(
                key,
                Found {
                    at: package.join(&at),
                    text: text.clone(),
                },
            );
        }
        Ok(())
    }

    /// The ValueSet with `canonical` (`url` or `url|version`): where it was found, and its
    /// text; a `NotFound` error naming the packages searched otherwise.
    pub(crate) fn valueset(&self, canonical: &str) -> std::io::Result<(PathBuf, String)> {
        match self.valuesets.get(canonical) {
            Some(found) => Ok((found.at.clone(), found.text.clone())),
            None if self.names.is_empty() => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no FHIR package was given; give the package that holds it with --package",
            )),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "not in the packages given ({}); check the canonical and its version",
                    self.names
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

/// The JSON files of an unpacked package, relative to `dir`.
fn folder_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let root = if dir.join("package").is_dir() {
        dir.join("package")
    } else {
        dir.to_owned()
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(&root)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut out = Vec::new();
    for path in names {
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            let text = std::fs::read_to_string(&path)?;
            let at = path.strip_prefix(dir).unwrap_or(&path).to_owned();
            out.push((at, text));
        }
    }
    Ok(out)
}

/// The JSON files of a package archive, by their path inside it.
fn archive_files(path: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let at = entry.path()?.into_owned();
        if !entry.header().entry_type().is_file() || at.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        out.push((at, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEART_FAILURE: &str = r#"{"resourceType": "ValueSet", "url": "https://example.org/fhir/ValueSet/hf", "version": "2.0.0", "status": "active",
        "compose": {"include": [{"system": "http://snomed.info/sct", "concept": [{"code": "84114007", "display": "Heart failure"}]}]}}"#;

    fn package_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = dir.path().join("package");
        std::fs::create_dir(&inner).expect("package/");
        std::fs::write(
            inner.join("package.json"),
            r#"{"name": "example.hf", "version": "2.0.0"}"#,
        )
        .expect("write");
        std::fs::write(inner.join("ValueSet-hf.json"), HEART_FAILURE).expect("write");
        std::fs::write(
            inner.join("CodeSystem-x.json"),
            r#"{"resourceType": "CodeSystem", "url": "https://example.org/fhir/CodeSystem/x"}"#,
        )
        .expect("write");
        dir
    }

    #[test]
    fn a_folder_and_its_archive_give_the_same_valuesets_by_url_and_version() {
        let dir = package_folder();
        let tgz = dir.path().join("example.hf-2.0.0.tgz");
        let file = std::fs::File::create(&tgz).expect("tgz");
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        tar.append_dir_all("package", dir.path().join("package"))
            .expect("tar");
        tar.into_inner().and_then(|gz| gz.finish()).expect("gzip");
        for path in [dir.path().to_owned(), tgz] {
            let packages = Packages::read(&[path]).expect("reads");
            for canonical in [
                "https://example.org/fhir/ValueSet/hf",
                "https://example.org/fhir/ValueSet/hf|2.0.0",
            ] {
                let (at, text) = packages.valueset(canonical).expect(canonical);
                assert_eq!(text, HEART_FAILURE);
                assert!(at.ends_with("package/ValueSet-hf.json"), "{}", at.display());
            }
            let missing = packages
                .valueset("https://example.org/fhir/ValueSet/hf|1.0.0")
                .expect_err("another version");
            assert!(missing.to_string().contains("not in the packages given"));
            assert!(
                packages
                    .valueset("https://example.org/fhir/CodeSystem/x")
                    .is_err()
            );
        }
    }

    #[test]
    fn without_packages_the_hint_says_to_give_one() {
        let e = Packages::default()
            .valueset("https://example.org/fhir/ValueSet/hf")
            .expect_err("none given");
        assert!(e.to_string().contains("--package"), "{e}");
    }

    #[test]
    fn two_packages_that_disagree_on_a_valueset_are_refused() {
        let a = package_folder();
        let b = package_folder();
        std::fs::write(
            b.path().join("package/ValueSet-hf.json"),
            HEART_FAILURE.replace("Heart failure", "HF"),
        )
        .expect("write");
        let e = Packages::read(&[a.path().to_owned(), b.path().to_owned()]).expect_err("conflict");
        assert!(matches!(e, PackageError::Conflict { .. }), "{e}");
        assert!(Packages::read(&[a.path().to_owned(), a.path().to_owned()]).is_ok());
    }

    #[test]
    fn a_package_that_is_not_there_names_itself() {
        let e = Packages::read(&[PathBuf::from("no/such/package.tgz")]).expect_err("missing");
        assert!(e.to_string().contains("no/such/package.tgz"), "{e}");
    }
}
