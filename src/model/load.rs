//! Reading a mapping file from disk or from the shipped text: the file and the files it includes
//! (relative to it, or ValueSets by canonical from the given packages), parsed and checked by
//! [`super::yaml`] and joined by [`super::include`], then the checks a schema cannot make
//! ([`super::check`]). Every problem is reported at once, each with file, line, column and a
//! hint. This module reads files and reports; it never guesses a fix or falls back to a default
//! on a bad value.

use std::path::Path;

use super::include;
pub use super::include::Loaded;
use super::mapping::Mapping;
use super::package::{self, Packages};
pub use super::yaml::{Diagnostic, MappingError, Pos, schema};

/// Loads, checks and returns a model, with the files it includes merged in. A file to include
/// is refused here: it places no one on its own.
pub fn load_file(path: &Path) -> Result<Mapping, MappingError> {
    match check_file(path)? {
        Loaded::Model(mapping) => Ok(mapping),
        Loaded::Fragment(f) => Err(MappingError::Invalid {
            path: path.to_owned(),
            diagnostics: vec![Diagnostic::new(
                "/fragment",
                format!(
                    "`{}` is a file for models to include, not a model",
                    f.fragment
                ),
                "run a model that includes it (`include: [key-client.yaml]`); check-mapping \
                 checks the file on its own",
            )],
        }),
    }
}

/// Loads and checks a model or a file to include; a model's `include:` files are read relative
/// to `path`, and ValueSets named by canonical from the packages the command line gave
/// (`package::given`).
pub fn check_file(path: &Path) -> Result<Loaded, MappingError> {
    check_file_with(path, package::given())
}

/// [`check_file`] with ValueSets named by canonical taken from `packages`.
fn check_file_with(path: &Path, packages: &Packages) -> Result<Loaded, MappingError> {
    let text = read_text(path).map_err(|source| MappingError::Io {
        path: path.to_owned(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let read = |name: &str| {
        if package::is_canonical(name) {
            return packages.valueset(name);
        }
        let file = dir.join(name);
        read_text(&file).map(|text| (file, text))
    };
    include::load(&text, &read).map_err(|diagnostics| MappingError::Invalid {
        path: path.to_owned(),
        diagnostics,
    })
}

/// A file's text; a file that is not UTF-8 is an `InvalidData` error naming the byte offset.
fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(std::fs::read(path)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 (invalid byte at offset {}); save it as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The files models may include that ship in `mappings/`, for models loaded from text (the
/// built-in default) rather than from a folder.
pub(crate) const SHIPPED: &[(&str, &str)] = &[
    (
        "key-client.yaml",
        include_str!("../../mappings/key-client.yaml"),
    ),
    (
        "service-areas.yaml",
        include_str!("../../mappings/service-areas.yaml"),
    ),
    (
        "social-services.yaml",
        include_str!("../../mappings/social-services.yaml"),
    ),
    (
        "functional-ability.yaml",
        include_str!("../../mappings/functional-ability.yaml"),
    ),
];

/// Loads and checks a model from its text; `include:` names files shipped in `mappings/`. On
/// failure, every problem found.
pub fn load_str(text: &str) -> Result<Mapping, Vec<Diagnostic>> {
    let read = |name: &str| {
        SHIPPED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| (Path::new("mappings").join(n), (*text).to_owned()))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file ships in mappings/",
                )
            })
    };
    match include::load(text, &read)? {
        Loaded::Model(mapping) => Ok(mapping),
        Loaded::Fragment(_) => Err(vec![Diagnostic::new(
            "/fragment",
            "this is a file for models to include, not a model",
            "load a model that includes it",
        )]),
    }
}
