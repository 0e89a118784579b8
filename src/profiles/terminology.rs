//! The CodeSystems and ValueSets of the package: segmentti's own codes, and per model one code
//! system (with a ValueSet of all its codes) for each kind of code the builders write, at the
//! url the builders write it with. Two package-wide ValueSets gather every model's segments and
//! overlays for the profiles' bindings. A code with two different displays in one model is an
//! error, since a code system gives each code one meaning.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{CANONICAL, ProfileError};
use crate::model::Plan;
use crate::model::mapping::Text;
use crate::writeback::{SEGMENTTI_SYSTEM, model_system, observation, parent_segment};

/// One concept: code, display (with translations), definition, and the concepts under it.
struct Concept {
    code: String,
    display: Text,
    definition: Option<String>,
    children: Vec<Concept>,
}

impl Concept {
    fn new(code: &str, display: &Text) -> Self {
        Self {
            code: code.to_owned(),
            display: display.clone(),
            definition: None,
            children: Vec::new(),
        }
    }

    fn to_fhir(&self) -> Value {
        let mut c = json!({
            "code": self.code,
            "display": self.display.fi,
            "designation": [
                {"language": "sv", "value": self.display.sv},
                {"language": "en", "value": self.display.en},
            ],
        });
        if let Some(d) = &self.definition {
            c["definition"] = json!(d);
        }
        if !self.children.is_empty() {
            c["concept"] = self.children.iter().map(Self::to_fhir).collect();
        }
        c
    }
}

/// A code system to be written, with the ValueSet of all its codes.
struct System {
    /// Canonical url, as the builders write it in `Coding.system`.
    url: String,
    /// Resource id, unique in the package.
    id: String,
    title: String,
    version: String,
    concepts: Vec<Concept>,
}

impl System {
    /// The CodeSystem and its ValueSet.
    fn to_fhir(&self) -> [Value; 2] {
        let name = pascal(&self.id);
        let mut cs = json!({
            "resourceType": "CodeSystem",
            "id": self.id,
            "url": self.url,
            "version": self.version,
            "name": name,
            "title": self.title,
            "status": "draft",
            "publisher": "segmentti",
            "language": "fi",
            "caseSensitive": true,
            "valueSet": value_set_url(&self.url),
            "content": "complete",
            "count": count(&self.concepts),
            "concept": self.concepts.iter().map(Concept::to_fhir).collect::<Vec<_>>(),
        });
        if self.concepts.iter().any(|c| !c.children.is_empty()) {
            cs["hierarchyMeaning"] = json!("is-a");
        }
        let vs = json!({
            "resourceType": "ValueSet",
            "id": self.id,
            "url": value_set_url(&self.url),
            "version": self.version,
            "name": name,
            "title": self.title,
            "status": "draft",
            "publisher": "segmentti",
            "compose": {"include": [{"system": self.url, "version": self.version}]},
        });
        [cs, vs]
    }
}

fn count(concepts: &[Concept]) -> usize {
    concepts.iter().map(|c| 1 + count(&c.children)).sum()
}

/// `…/CodeSystem/x` → `…/ValueSet/x`.
fn value_set_url(system: &str) -> String {
    system.replacen("/CodeSystem/", "/ValueSet/", 1)
}

/// `paijat-sote-level-support-need` → `PaijatSoteLevelSupportNeed`.
fn pascal(id: &str) -> String {
    id.split(['-', '_', '.'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// Every CodeSystem and ValueSet of the package.
pub(crate) fn resources(plans: &[Plan]) -> Result<Vec<Value>, ProfileError> {
    let version = env!("CARGO_PKG_VERSION");
    let mut systems = vec![System {
        url: SEGMENTTI_SYSTEM.to_owned(),
        id: "segmentti".into(),
        title: "segmentti's own codes".into(),
        version: version.into(),
        concepts: vec![
            Concept::new("segment-assessment", &observation::assessment_code()),
            Concept::new("parent-segment", &parent_segment()),
        ],
    }];
    for plan in plans {
        systems.extend(model_systems(plan)?);
    }
    let mut out: Vec<Value> = systems.iter().flat_map(System::to_fhir).collect();
    out.push(gathering(
        plans,
        "segments",
        "segment",
        "Every model's segments",
    ));
    out.push(gathering(
        plans,
        "overlays",
        "overlay",
        "Every model's overlays",
    ));
    Ok(out)
}

/// A package-wide ValueSet including one kind of code system of every model that has one.
fn gathering(plans: &[Plan], id: &str, kind: &str, title: &str) -> Value {
    let include: Vec<Value> = plans
        .iter()
        .filter(|p| kind != "overlay" || !p.mapping.overlays.is_empty())
        .map(|p| json!({"system": model_system(p, kind)}))
        .collect();
    json!({
        "resourceType": "ValueSet",
        "id": id,
        "url": format!("{CANONICAL}/ValueSet/{id}"),
        "version": env!("CARGO_PKG_VERSION"),
        "name": pascal(id),
        "title": title,
        "status": "draft",
        "publisher": "segmentti",
        "compose": {"include": include},
    })
}

/// The code systems of one model.
fn model_systems(plan: &Plan) -> Result<Vec<System>, ProfileError> {
    let m = &plan.mapping;
    let system = |tail: &str, what: &str, concepts: Vec<Concept>| System {
        url: model_system(plan, tail),
        id: format!("{}-{}", m.id, tail.replace(['/', '_'], "-")),
        title: format!("{}: {what}", m.title.en),
        version: m.version.clone(),
        concepts,
    };
    let clash = |what: String| ProfileError::Terminology {
        model: m.id.to_string(),
        what,
    };
    let mut out = vec![
        system(
            "model",
            "the model",
            vec![Concept::new(m.id.as_str(), &m.title)],
        ),
        system("segment", "segments", segments(plan)),
        system(
            "criterion",
            "criteria",
            m.criteria
                .iter()
                .map(|c| Concept {
                    definition: c.description.as_ref().map(|d| d.en.clone()),
                    ..Concept::new(&c.id, &c.title)
                })
                .collect(),
        ),
    ];
    for c in &m.criteria {
        out.push(system(
            &format!("level/{}", c.id),
            &format!("levels of {}", c.title.en),
            c.levels
                .iter()
                .map(|l| Concept::new(&l.code, &l.display))
                .collect(),
        ));
    }
    if !m.overlays.is_empty() {
        out.push(system(
            "overlay",
            "overlays",
            m.overlays
                .iter()
                .map(|o| Concept::new(&o.code, &o.display))
                .collect(),
        ));
        let rules = m
            .overlays
            .iter()
            .flat_map(|o| &o.rules)
            .map(|r| (r.id.as_str(), &r.title));
        out.push(system(
            "overlay-rule",
            "overlay rules",
            distinct(rules).map_err(&clash)?,
        ));
    }
    let attributes = m.segments.iter().flat_map(|s| &s.attributes);
    if attributes.clone().next().is_some() {
        out.push(system(
            "attribute",
            "segment attributes",
            distinct(attributes.clone().map(|a| (a.code.as_str(), &a.display))).map_err(&clash)?,
        ));
        let mut values: BTreeMap<&str, Vec<(&str, &Text)>> = BTreeMap::new();
        for a in attributes {
            if let Some(c) = &a.concept {
                values
                    .entry(a.code.as_str())
                    .or_default()
                    .push((c.code.as_str(), &c.display));
            }
        }
        for (code, vals) in values {
            out.push(system(
                &format!("attribute/{code}"),
                &format!("values of {code}"),
                distinct(vals.into_iter()).map_err(&clash)?,
            ));
        }
    }
    Ok(out)
}

/// The segments, sub-segments nested under their parent.
fn segments(plan: &Plan) -> Vec<Concept> {
    let m = &plan.mapping;
    let concept = |s: &crate::model::mapping::Segment| Concept {
        definition: s.definition.as_ref().map(|d| d.en.clone()),
        ..Concept::new(s.code.as_str(), &s.display)
    };
    m.segments
        .iter()
        .filter(|s| s.parent.is_none())
        .map(|top| Concept {
            children: m
                .segments
                .iter()
                .filter(|s| s.parent.as_ref() == Some(&top.code))
                .map(concept)
                .collect(),
            ..concept(top)
        })
        .collect()
}

/// One concept per code, in first-seen order; a code seen with two displays is an error.
fn distinct<'a>(codes: impl Iterator<Item = (&'a str, &'a Text)>) -> Result<Vec<Concept>, String> {
    let mut out: Vec<Concept> = Vec::new();
    for (code, display) in codes {
        match out.iter().find(|c| c.code == code) {
            Some(c) if c.display != *display => {
                return Err(format!(
                    "the code `{code}` has two displays (`{}` and `{}`)",
                    c.display.fi, display.fi
                ));
            }
            Some(_) => {}
            None => out.push(Concept::new(code, display)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_pascal_case() {
        assert_eq!(
            pascal("paijat-sote-level-support_need"),
            "PaijatSoteLevelSupportNeed"
        );
    }

    #[test]
    fn a_code_with_two_displays_is_refused() {
        let a = Text {
            fi: "a".into(),
            sv: "a".into(),
            en: "a".into(),
        };
        let b = Text {
            fi: "b".into(),
            ..a.clone()
        };
        assert_eq!(
            distinct([("x", &a), ("x", &a)].into_iter()).map(|c| c.len()),
            Ok(1)
        );
        let e = distinct([("x", &a), ("x", &b)].into_iter())
            .err()
            .expect("a clash");
        assert!(e.contains("`x` has two displays"), "{e}");
    }
}
