//! Files a model includes (`include: [key-client.yaml]`): one definition of an overlay or of
//! the service areas, with the code lists and features it needs, shared by several models. An
//! included file (a [`Fragment`]) is checked on its own first, as if it were a model with no
//! tree, so its problems name its own lines; its code lists, features, overlays and service
//! areas are then appended to the model's, and a name defined twice is an error naming both
//! files and lines. What the merged model still gets wrong is reported in the file that wrote
//! it. This module merges and locates; how files are found is the caller's (a folder for files,
//! the shipped set for the built-in model).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{check, valueset};
use serde_json::Value;

use super::mapping::{Fragment, Mapping};
use super::yaml::{Diagnostic, Pos, Reader, Spanned, parse_yaml, typed};

/// A mapping file, checked: a model with its includes merged in, or a file to include.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per file loaded, moved once; boxing would only add an indirection"
)]
pub enum Loaded {
    /// A model.
    Model(Mapping),
    /// A file for models to include.
    Fragment(Fragment),
}

/// An included file, read and checked.
struct Part {
    /// Its index in the model's `include:` list.
    index: usize,
    file: PathBuf,
    spanned: Spanned,
    fragment: Fragment,
}

/// Where each entry of the merged lists was written: `None` for the model itself, else the
/// index of the included file and the entry's index there.
#[derive(Default)]
struct Origins {
    by_list: BTreeMap<&'static str, Vec<Option<(usize, usize)>>>,
}

impl Origins {
    /// `pointer` into the merged model as (file, pointer there); `None` as file for the model.
    fn locate(&self, pointer: &str) -> (Option<usize>, String) {
        let mut parts = pointer.splitn(4, '/').skip(1);
        let (Some(list), Some(index)) = (parts.next(), parts.next()) else {
            return (None, pointer.to_owned());
        };
        let origin = index
            .parse::<usize>()
            .ok()
            .and_then(|i| self.by_list.get(list)?.get(i).copied().flatten());
        match origin {
            Some((part, j)) => {
                let rest = parts.next().map(|r| format!("/{r}")).unwrap_or_default();
                (Some(part), format!("/{list}/{j}{rest}"))
            }
            None => (None, pointer.to_owned()),
        }
    }
}

/// Loads `text`, a model or a file to include; a model's includes are read with `read`.
pub(crate) fn load(text: &str, read: Reader<'_>) -> Result<Loaded, Vec<Diagnostic>> {
    let spanned = parse_yaml(text).map_err(|d| vec![d])?;
    if names_fragment(&spanned.value) {
        let (spanned, mut fragment) = typed::<Fragment>(spanned)?;
        let mut diagnostics = valueset::resolve(
            &mut fragment.code_lists,
            &fragment.systems,
            Path::new(""),
            read,
        );
        if diagnostics.is_empty() {
            diagnostics = check::check_fragment(&fragment);
        }
        if diagnostics.is_empty() {
            return Ok(Loaded::Fragment(fragment));
        }
        return Err(spanned.place(diagnostics));
    }
    let (spanned, mut mapping) = typed::<Mapping>(spanned)?;
    let mut problems = valueset::resolve(
        &mut mapping.code_lists,
        &mapping.systems,
        Path::new(""),
        read,
    );
    let (mapping, parts, origins) = match merge(mapping, &spanned, read) {
        Ok(merged) if problems.is_empty() => merged,
        Ok(_) => return Err(spanned.place(problems)),
        Err(more) => {
            problems.extend(more);
            return Err(spanned.place(problems));
        }
    };
    let diagnostics = check::check(&mapping);
    if diagnostics.is_empty() {
        return Ok(Loaded::Model(mapping));
    }
    let located = diagnostics
        .into_iter()
        .map(|mut d| {
            let (part, pointer) = origins.locate(&d.pointer);
            if let Some(p) = part.map(|p| &parts[p]) {
                d.pos = p.spanned.pos(&pointer);
                d.file = Some(p.file.clone());
            }
            d.pointer = pointer;
            d
        })
        .collect();
    Err(spanned.place(located))
}

/// Whether `text` is a file to include: a mapping with a top-level `fragment` key. Text that is
/// not YAML is taken for a model, whose loading then reports the YAML error.
pub fn is_fragment(text: &str) -> bool {
    parse_yaml(text).is_ok_and(|s| names_fragment(&s.value))
}

fn names_fragment(document: &Value) -> bool {
    document.get("fragment").is_some()
}

/// The model with its included files' entries appended; every problem of the included files
/// and every clash of names.
fn merge(
    mut mapping: Mapping,
    spanned: &Spanned,
    read: Reader<'_>,
) -> Result<(Mapping, Vec<Part>, Origins), Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut parts = Vec::new();
    for (i, include) in mapping.include.iter().enumerate() {
        let pointer = format!("/include/{i}");
        let (file, text) = match read(include) {
            Ok(found) => found,
            Err(e) => {
                diagnostics.push(Diagnostic::new(
                    pointer,
                    format!("cannot read the included file `{include}`: {e}"),
                    "give its path relative to this file, such as key-client.yaml",
                ));
                continue;
            }
        };
        let parsed = match parse_yaml(&text) {
            Ok(parsed) => parsed,
            Err(d) => {
                diagnostics.extend(in_file(vec![d], &file));
                continue;
            }
        };
        if !names_fragment(&parsed.value) {
            diagnostics.push(Diagnostic::new(
                pointer,
                format!("`{include}` is a model; only files with `fragment:` can be included"),
                "include a file of code lists, features and overlays (mappings/key-client.yaml)",
            ));
            continue;
        }
        match typed::<Fragment>(parsed) {
            Ok((spanned, mut fragment)) => {
                // The fragment's ValueSet paths are relative to the fragment.
                let base = Path::new(include).parent().unwrap_or(Path::new(""));
                let mut problems =
                    valueset::resolve(&mut fragment.code_lists, &fragment.systems, base, read);
                if problems.is_empty() {
                    problems = check::check_fragment(&fragment);
                }
                if problems.is_empty() {
                    parts.push(Part {
                        index: i,
                        file,
                        spanned,
                        fragment,
                    });
                } else {
                    diagnostics.extend(in_file(spanned.place(problems), &file));
                }
            }
            Err(problems) => diagnostics.extend(in_file(problems, &file)),
        }
    }
    let mut origins = Origins::default();
    for (list, own) in [
        ("code_lists", mapping.code_lists.len()),
        ("features", mapping.features.len()),
        ("overlays", mapping.overlays.len()),
        ("service_areas", mapping.service_areas.len()),
    ] {
        origins.by_list.insert(list, vec![None; own]);
    }
    for (p, part) in parts.iter().enumerate() {
        let f = &part.fragment;
        let mut clash =
            |list: &'static str, what: &str, name_of: &str, existing: Option<usize>, j| {
                let Some(k) = existing else {
                    origins.by_list.entry(list).or_default().push(Some((p, j)));
                    return true;
                };
                diagnostics.push(clash_diagnostic(
                    (list, what, name_of),
                    (k, j),
                    &origins,
                    spanned,
                    (&parts, p),
                ));
                false
            };
        for (j, l) in f.code_lists.iter().enumerate() {
            let existing = mapping.code_lists.iter().position(|x| x.id == l.id);
            if clash("code_lists", "code list", &l.id, existing, j) {
                let mut l = l.clone();
                // Short system names are the included file's own; the model may not have them.
                for c in &mut l.codes {
                    if let Some(url) = f.systems.get(&c.system) {
                        c.system = url.clone();
                    }
                }
                mapping.code_lists.push(l);
            }
        }
        for (j, x) in f.features.iter().enumerate() {
            let existing = mapping.features.iter().position(|y| y.id == x.id);
            if clash("features", "feature", &x.id, existing, j) {
                mapping.features.push(x.clone());
            }
        }
        for (j, o) in f.overlays.iter().enumerate() {
            let existing = mapping.overlays.iter().position(|y| y.code == o.code);
            if clash("overlays", "overlay", &o.code, existing, j) {
                mapping.overlays.push(o.clone());
            }
        }
        for (j, a) in f.service_areas.iter().enumerate() {
            let existing = mapping.service_areas.iter().position(|y| y.code == a.code);
            if clash("service_areas", "service area", &a.code, existing, j) {
                mapping.service_areas.push(a.clone());
            }
        }
        if mapping.prices.is_none()
            && let Some(cost) = f.features.iter().find(|x| x.cost.is_some())
        {
            diagnostics.push(Diagnostic::new(
                format!("/include/{}", part.index),
                format!(
                    "`{}` has the cost feature `{}`, which sums this model's price table, and this model has no `prices`",
                    part.file.display(),
                    cost.id
                ),
                "add a `prices` table to the model, or do not include the file",
            ));
        }
    }
    if diagnostics.is_empty() {
        Ok((mapping, parts, origins))
    } else {
        Err(spanned.place(diagnostics))
    }
}

/// `diagnostics` of the included `file`.
fn in_file(diagnostics: Vec<Diagnostic>, file: &Path) -> Vec<Diagnostic> {
    diagnostics
        .into_iter()
        .map(|d| Diagnostic {
            file: Some(file.to_owned()),
            ..d
        })
        .collect()
}

/// A name defined by entry `k` of the merged list and again by entry `j` of included file `p`:
/// reported at the first definition, naming the second with its file and line.
fn clash_diagnostic(
    (list, what, name): (&str, &str, &str),
    (k, j): (usize, usize),
    origins: &Origins,
    model: &Spanned,
    (parts, p): (&[Part], usize),
) -> Diagnostic {
    let second = &parts[p];
    let at = |file: &Path, pos: Option<Pos>| match pos {
        Some(pos) => format!("{}:{}:{}", file.display(), pos.line, pos.col),
        None => file.display().to_string(),
    };
    let there = at(&second.file, second.spanned.pos(&format!("/{list}/{j}")));
    let (first, pointer) = origins.locate(&format!("/{list}/{k}"));
    let mut d = Diagnostic::new(
        pointer.clone(),
        format!("{what} `{name}` is also defined in {there}"),
        format!(
            "an included file's {what}s become the model's own: keep one definition (drop \
             this one to use the included one) or rename one of them"
        ),
    );
    match first.map(|f| &parts[f]) {
        Some(part) => {
            d.pos = part.spanned.pos(&pointer);
            d.file = Some(part.file.clone());
        }
        None => d.pos = model.pos(&pointer),
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `model` with `service-areas.yaml` read as `areas` and the other shipped files.
    fn load_with(model: &str, areas: &str) -> Result<Loaded, Vec<Diagnostic>> {
        let read = |name: &str| {
            let text = match name {
                "service-areas.yaml" => areas,
                other => crate::model::load::SHIPPED
                    .iter()
                    .find(|(n, _)| *n == other)
                    .map(|(_, text)| *text)
                    .unwrap_or_else(|| panic!("unexpected include {other}")),
            };
            Ok((PathBuf::from(name), text.to_owned()))
        };
        load(model, &read)
    }

    fn virta() -> String {
        include_str!("../../mappings/virta.yaml").to_owned()
    }

    const AREAS: &str = include_str!("../../mappings/service-areas.yaml");

    #[test]
    fn a_problem_in_an_included_entry_is_placed_in_that_file() {
        let broken = AREAS.replace("feature: oral_contacts_12m", "feature: oral_visits");
        let line = broken
            .lines()
            .position(|l| l.contains("feature: oral_visits"))
            .expect("edited")
            + 1;
        let Err(d) = load_with(&virta(), &broken) else {
            panic!("an unknown feature is refused");
        };
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].file.as_deref(), Some(Path::new("service-areas.yaml")));
        assert_eq!(d[0].pos.map(|p| p.line), Some(line), "{d:?}");
        assert!(d[0].message.contains("unknown feature `oral_visits`"));
    }

    #[test]
    fn a_model_entry_that_an_included_file_also_defines_names_both_lines() {
        let model = virta().replace(
            "features:\n",
            "service_areas:\n  - {code: oral, display: {fi: S, sv: M, en: Oral}, feature: age}\n\nfeatures:\n",
        );
        let Err(d) = load_with(&model, AREAS) else {
            panic!("a clash is refused");
        };
        let there = AREAS
            .lines()
            .position(|l| l.contains("- code: oral"))
            .expect("oral")
            + 1;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].file, None, "placed in the model");
        assert!(
            d[0].message.contains(&format!(
                "service area `oral` is also defined in service-areas.yaml:{there}:"
            )),
            "{d:?}"
        );
    }

    #[test]
    fn a_cost_feature_needs_the_including_models_price_table() {
        let model = include_str!("../../mappings/helsinki-oral-health.yaml").replacen(
            "\nsystems:\n",
            "\ninclude: [key-client.yaml]\nsystems:\n",
            1,
        );
        let Err(d) = load_with(&model, AREAS) else {
            panic!("a model without prices cannot include a cost feature");
        };
        assert!(
            d.iter().any(|d| d.pointer == "/include/0"
                && d.message.contains("`cost_12m`")
                && d.message.contains("no `prices`")),
            "{d:?}"
        );
    }

    #[test]
    fn the_merged_model_has_the_included_entries_after_its_own() {
        let Ok(Loaded::Model(m)) = load_with(&virta(), AREAS) else {
            panic!("virta loads");
        };
        let areas: Vec<&str> = m.service_areas.iter().map(|a| a.code.as_str()).collect();
        assert_eq!(areas, ["health", "social", "oral"]);
        // functional-ability.yaml is virta's last include.
        let last = m.code_lists.last().expect("lists");
        assert_eq!(last.id, "barthel_total");
        assert!(
            last.codes.iter().all(|c| c.system.contains(':')),
            "the included file's short system names are resolved: {:?}",
            last.codes
        );
    }
}
