//! The whole client from several sources: each source is folded on its own, under its own
//! local Patient ids, and this module decides which local Patients are the same person and
//! merges their records into one client, so that a client who looks light in each system
//! alone can be seen as the multi-sector client they are. It owns the join key and the rules
//! below; it reads nothing and writes nothing, and sources are plain numbers to it.
//!
//! The join key is HMAC-SHA256 (truncated to 128 bits), under a key the county keeps, of the
//! Patient's identifier in the first join system it has (default: the personal identity code,
//! `urn:oid:1.2.246.21`). Without the key a join key cannot be turned back into an identity
//! code, so join keys are what reports name; identity codes stay inside this module unless
//! `show_identifiers` asks for them in reports.
//!
//! | case | rule |
//! |---|---|
//! | Patients of several sources with the same join key | one client: records merged, each source keeps its own Patient for write-back |
//! | a Patient without an identifier in any join system | a client of its own source only; counted |
//! | `link` of type `replaced-by` or `seealso` to a Patient of the same source | one client: the linking Patient's data are merged into the target's, and only the target is written to |
//! | such a link to a Patient of another source (an absolute URL under that server's base) | one client: the two clients are merged and each source keeps its own Patient for write-back, unless the target's client already has a Patient on the linking source (then the link is logged and not followed) |
//! | two Patients of one source with the same join key and no link between them | the one updated last (`meta.lastUpdated`, then the greater id) is kept; the others are skipped, neither read nor written, and reported with their ids |
//!
//! A Patient is one person's only when its identifier says so: the join key covers the first
//! join system a Patient has, so a client known by the identity code in one system and only
//! by a county client number in another is two clients (give the systems in an order every
//! source can meet). A link to a server that is not one of the sources is not followed.

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use hmac::{Hmac, Mac};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::extract::{Person, patient_id};
use super::{ClientRecord, Clients};
use crate::model::plan::Plan;

/// The Finnish personal identity code, the default join system.
pub const IDENTITY_CODE: &str = "urn:oid:1.2.246.21";

/// A pseudonymous client key: the HMAC of an identifier, truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinKey([u8; 16]);

impl fmt::Display for JoinKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// How to join: the key of the keyed hash and the identifier systems, most preferred first.
pub struct JoinSpec {
    key: Vec<u8>,
    systems: Vec<String>,
    show_identifiers: bool,
}

impl fmt::Debug for JoinSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinSpec")
            .field("key", &"[redacted]")
            .field("systems", &self.systems)
            .field("show_identifiers", &self.show_identifiers)
            .finish()
    }
}

/// Why a join cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The key is too short to keep identity codes from being guessed back.
    #[error(
        "the join key has {0} bytes; it needs at least 16\nhint: make one with `head -c 32 /dev/urandom > join.key`"
    )]
    ShortKey(usize),
    /// No join system.
    #[error(
        "no identifier system to join on\nhint: give --join-system, or leave it out for the identity code"
    )]
    NoSystems,
}

impl JoinSpec {
    /// A spec joining on `systems` (most preferred first) under `key` (at least 16 bytes).
    pub fn new(
        key: Vec<u8>,
        systems: Vec<String>,
        show_identifiers: bool,
    ) -> Result<Self, JoinError> {
        if key.len() < 16 {
            return Err(JoinError::ShortKey(key.len()));
        }
        if systems.is_empty() {
            return Err(JoinError::NoSystems);
        }
        Ok(Self {
            key,
            systems,
            show_identifiers,
        })
    }

    /// The join key of `value` in `system`.
    fn key_of(&self, system: &str, value: &str) -> JoinKey {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(system.as_bytes());
        mac.update(b"|");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        JoinKey(key)
    }

    /// What the join keeps of one Patient: its key, links and last update (and its identifier
    /// only when reports may show it).
    pub(crate) fn identity(&self, person: &Person) -> Identity {
        let chosen = self.systems.iter().find_map(|system| {
            person
                .identifiers
                .iter()
                .find(|(s, v)| s.as_str() == system.as_str() && !v.is_empty())
        });
        Identity {
            key: chosen.map(|(s, v)| self.key_of(s, v)),
            shown: chosen
                .filter(|_| self.show_identifiers)
                .map(|(s, v)| CompactString::new(format!("{s}|{v}"))),
            links: person
                .links
                .iter()
                .filter(|(_, kind)| matches!(kind.as_str(), "replaced-by" | "seealso"))
                .map(|(other, _)| other.clone())
                .collect(),
            last_updated: person.last_updated.clone(),
        }
    }
}

/// What the join knows of one Patient.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Its join key, when it has an identifier in a join system.
    pub key: Option<JoinKey>,
    /// `system|value` of that identifier, only with `show_identifiers`.
    pub shown: Option<CompactString>,
    /// The Patients it names as the same person (`replaced-by`, `seealso`), as referenced:
    /// `Patient/id`, or an absolute URL.
    pub links: Vec<CompactString>,
    /// `meta.lastUpdated`.
    pub last_updated: Option<CompactString>,
}

/// One source's fold: per plan its clients by local id, and its Patients' identities.
#[derive(Debug, Default)]
pub(crate) struct SourceFold {
    /// Per plan, the clients by local Patient id.
    pub clients: Vec<Clients>,
    /// The identities of its Patients, by local id.
    pub people: FxHashMap<CompactString, Identity>,
    /// The server's base URL, for links from other sources to its Patients; `None` for files.
    pub base: Option<String>,
}

impl SourceFold {
    /// The local Patient id `reference` names when it points into this source: relative, or
    /// absolute under its base.
    fn local<'r>(&self, reference: &'r str) -> Option<&'r str> {
        points_into(self.base.as_deref(), reference)
    }
}

/// Where one client is held: a source, its Patient there, and how many of the source's
/// resources counted for each plan.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    /// The source's number.
    pub source: usize,
    /// The client's Patient id on that source.
    pub patient: CompactString,
    /// Per plan, how many of this source's resources counted.
    pub evidence: Vec<u32>,
}

/// The joined population.
#[derive(Debug, Default)]
pub struct Joined {
    /// Per plan, the clients by client id: the join key, or `{source}:{local id}` for a
    /// client without one.
    pub clients: Vec<Clients>,
    /// Per client id, the sources holding the client, in source order.
    pub holders: FxHashMap<CompactString, Vec<Holder>>,
    /// What the join did.
    pub report: JoinReport,
}

/// What the join did, for the run's summary: counts and pseudonymous keys, never identifiers
/// unless asked for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinReport {
    /// Per source.
    pub sources: Vec<SourceJoin>,
    /// Clients after the join.
    pub clients: u64,
    /// Clients held by more than one source.
    pub in_several: u64,
    /// Clients merged because a Patient links to a Patient of another source.
    pub linked_across: u64,
}

/// What the join did with one source's Patients.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceJoin {
    /// Patients read.
    pub patients: u64,
    /// Patients with a join key.
    pub joinable: u64,
    /// Patients without an identifier in any join system: clients of this source only.
    pub unjoinable: u64,
    /// Patients merged into the Patient their `link` names.
    pub linked: u64,
    /// Join keys held by more than one Patient of this source.
    pub duplicates: Vec<Duplicate>,
}

/// Patients of one source sharing a join key.
#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    /// The join key.
    pub key: String,
    /// The Patient kept.
    pub kept: String,
    /// The Patients skipped.
    pub skipped: Vec<String>,
    /// The identifier, only with `show_identifiers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
}

/// Joins the folds of `sources` (in order: the first is preferred where records disagree,
/// as on a birth date) for every plan.
pub(crate) fn join(sources: Vec<SourceFold>, plans: &[Plan]) -> Joined {
    let mut joined = Joined {
        clients: vec![FxHashMap::default(); plans.len()],
        ..Joined::default()
    };
    let bases: Vec<Option<String>> = sources.iter().map(|s| s.base.clone()).collect();
    // Per source, the client of each of its Patients; and the links that leave their source,
    // followed once every source's clients are known.
    let mut client_of: Vec<FxHashMap<CompactString, CompactString>> = Vec::new();
    let mut leaving: Vec<(usize, CompactString, CompactString)> = Vec::new();
    for (s, mut source) in sources.into_iter().enumerate() {
        let (clients, report) = groups(s, &source);
        let mut theirs = FxHashMap::default();
        for (client, members) in clients {
            for member in &members {
                theirs.insert(member.clone(), client.clone());
                let links = source.people.get(member).map(|i| i.links.as_slice());
                for link in links.unwrap_or_default() {
                    if source.local(link).is_none() {
                        leaving.push((s, client.clone(), link.clone()));
                    }
                }
            }
            let mut evidence = Vec::with_capacity(plans.len());
            for (p, plan) in plans.iter().enumerate() {
                let mut record: Option<ClientRecord> = None;
                for member in &members {
                    let Some(mut r) = source.clients[p].remove(member) else {
                        continue;
                    };
                    let tag = u16::try_from(s).unwrap_or(u16::MAX);
                    r.evidence.iter_mut().for_each(|e| e.source = tag);
                    match &mut record {
                        Some(into) => into.merge(plan, r),
                        None => record = Some(r),
                    }
                }
                let Some(record) = record else { continue };
                evidence.push(record.evidence_total);
                match joined.clients[p].get_mut(&client) {
                    Some(into) => into.merge(plan, record),
                    None => {
                        joined.clients[p].insert(client.clone(), record);
                    }
                }
            }
            joined.holders.entry(client).or_default().push(Holder {
                source: s,
                patient: members[0].clone(),
                evidence,
            });
        }
        client_of.push(theirs);
        joined.report.sources.push(report);
    }
    follow_links(&mut joined, plans, &bases, &client_of, leaving);
    joined.report.clients = joined.holders.len() as u64;
    joined.report.in_several = joined.holders.values().filter(|h| h.len() > 1).count() as u64;
    joined
}

/// Merges the clients that `leaving` links (source, client, reference) join to a Patient of
/// another source, in link order; a client merged away is followed to where it went.
fn follow_links(
    joined: &mut Joined,
    plans: &[Plan],
    bases: &[Option<String>],
    client_of: &[FxHashMap<CompactString, CompactString>],
    leaving: Vec<(usize, CompactString, CompactString)>,
) {
    let mut moved: FxHashMap<CompactString, CompactString> = FxHashMap::default();
    let resolve = |moved: &FxHashMap<CompactString, CompactString>, mut client: CompactString| {
        while let Some(next) = moved.get(&client) {
            client = next.clone();
        }
        client
    };
    for (s, from, reference) in leaving {
        let target = (0..bases.len()).filter(|&t| t != s).find_map(|t| {
            let id = points_into(bases[t].as_deref(), &reference)?;
            client_of[t].get(id)
        });
        let Some(to) = target else { continue };
        let (from, to) = (resolve(&moved, from), resolve(&moved, to.clone()));
        let (Some(theirs), Some(ours)) = (joined.holders.get(&from), joined.holders.get(&to))
        else {
            continue;
        };
        if from == to {
            continue;
        }
        if theirs
            .iter()
            .any(|h| ours.iter().any(|o| o.source == h.source))
        {
            tracing::warn!(source = s, client = %from, "a Patient links to a client that already has a Patient on its source; the link is not followed");
            continue;
        }
        let theirs = joined.holders.remove(&from).unwrap_or_default();
        let into = joined.holders.entry(to.clone()).or_default();
        into.extend(theirs);
        into.sort_by_key(|h| h.source);
        for (p, plan) in plans.iter().enumerate() {
            let Some(record) = joined.clients[p].remove(&from) else {
                continue;
            };
            match joined.clients[p].get_mut(&to) {
                Some(into) => into.merge(plan, record),
                None => {
                    joined.clients[p].insert(to.clone(), record);
                }
            }
        }
        moved.insert(from, to);
        joined.report.linked_across += 1;
    }
}

/// The Patient id `reference` names when it points into a source with `base`: relative
/// references point into every source (their own), absolute ones into the one whose base
/// they start with.
fn points_into<'r>(base: Option<&str>, reference: &'r str) -> Option<&'r str> {
    let id = patient_id(reference)?;
    if !reference.contains("://") {
        return Some(id);
    }
    let base = base?.trim_end_matches('/');
    let rest = reference.strip_prefix(base)?;
    rest.starts_with('/').then_some(id)
}

/// One source's clients: client id → its local Patients, the one written to first, in a
/// stable order; and what was decided.
fn groups(
    s: usize,
    source: &SourceFold,
) -> (BTreeMap<CompactString, Vec<CompactString>>, SourceJoin) {
    let Some(first) = source.clients.first() else {
        return (BTreeMap::new(), SourceJoin::default());
    };
    let mut ids: Vec<&CompactString> = first.keys().collect();
    ids.sort_unstable();
    let identity = |id: &CompactString| source.people.get(id);
    // A link to a Patient of this source makes the linking one a member of the target's
    // group; chains are followed, and a cycle ends at its smallest id.
    let parent = |id: &CompactString| -> Option<&CompactString> {
        (identity(id)?.links.iter())
            .filter_map(|link| source.local(link))
            .filter(|other| *other != id.as_str())
            .find_map(|other| first.get_key_value(other).map(|(key, _)| key))
    };
    let root = |id: &CompactString| -> CompactString {
        let mut path = vec![id];
        while let Some(next) = parent(path[path.len() - 1]) {
            if let Some(at) = path.iter().position(|p| *p == next) {
                return path[at..].iter().min().map_or(id.clone(), |m| (*m).clone());
            }
            path.push(next);
        }
        path[path.len() - 1].clone()
    };
    let mut by_root: BTreeMap<CompactString, Vec<CompactString>> = BTreeMap::new();
    for id in &ids {
        by_root.entry(root(id)).or_default().push((*id).clone());
    }
    let mut report = SourceJoin {
        patients: ids.len() as u64,
        ..SourceJoin::default()
    };
    let mut by_key: BTreeMap<JoinKey, Vec<(CompactString, Vec<CompactString>)>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (root, mut members) in by_root {
        report.linked += members.len() as u64 - 1;
        // The root first: it is the Patient written to.
        members.sort_by_key(|m| *m != root);
        for m in &members {
            if identity(m).and_then(|i| i.key).is_some() {
                report.joinable += 1;
            } else {
                report.unjoinable += 1;
            }
        }
        match members.iter().find_map(|m| identity(m)?.key) {
            Some(key) => by_key.entry(key).or_default().push((root, members)),
            None => {
                out.insert(CompactString::new(format!("{s}:{root}")), members);
            }
        }
    }
    // Roots sharing a key: the one updated last is the client's Patient here.
    for (key, mut roots) in by_key {
        let updated = |r: &CompactString| identity(r).and_then(|i| i.last_updated.clone());
        roots.sort_by_key(|(r, _)| (updated(r), r.clone()));
        let Some((kept, members)) = roots.pop() else {
            continue;
        };
        if !roots.is_empty() {
            let skipped: Vec<String> = roots.iter().map(|(r, _)| r.to_string()).collect();
            tracing::warn!(source = s, key = %key, kept = %kept, skipped = ?skipped, "Patients of one source share a join key; the one updated last is kept");
            report.duplicates.push(Duplicate {
                key: key.to_string(),
                kept: kept.to_string(),
                skipped,
                identifier: identity(&kept)
                    .and_then(|i| i.shown.as_ref())
                    .map(ToString::to_string),
            });
        }
        out.insert(CompactString::new(key.to_string()), members);
    }
    (out, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::load_str;

    fn plan() -> Plan {
        let mapping = load_str(include_str!("../../mappings/paijat-sote.yaml")).expect("model");
        Plan::compile(mapping, "2026-01-01".parse().expect("day")).expect("plan")
    }

    fn spec() -> JoinSpec {
        JoinSpec::new(vec![7; 32], vec![IDENTITY_CODE.into()], false).expect("spec")
    }

    fn person(code: Option<&str>, links: &[&str], updated: &str) -> Identity {
        spec().identity(&Person {
            identifiers: code
                .map(|c| (IDENTITY_CODE.into(), c.into()))
                .into_iter()
                .collect(),
            links: links
                .iter()
                .map(|l| ((*l).into(), "replaced-by".into()))
                .collect(),
            last_updated: Some(updated.into()),
        })
    }

    fn source(plan: &Plan, people: &[(&str, Identity)]) -> SourceFold {
        let mut clients = FxHashMap::default();
        let mut ids = FxHashMap::default();
        for (id, identity) in people {
            let mut record = ClientRecord::empty(plan);
            record.resources = 1;
            clients.insert(CompactString::new(id), record);
            ids.insert(CompactString::new(id), identity.clone());
        }
        SourceFold {
            clients: vec![clients],
            people: ids,
            base: None,
        }
    }

    /// Where client `k` is held: (source, Patient id).
    fn holders(joined: &Joined, k: &str) -> Vec<(usize, String)> {
        (joined.holders[k].iter())
            .map(|h| (h.source, h.patient.to_string()))
            .collect()
    }

    fn at(s: usize, id: &str) -> (usize, String) {
        (s, id.to_owned())
    }

    #[test]
    fn keys_are_keyed_and_never_the_code() {
        let a = spec().key_of(IDENTITY_CODE, "010101-9001");
        let other = JoinSpec::new(vec![8; 32], vec![IDENTITY_CODE.into()], false).expect("spec");
        assert_ne!(a, other.key_of(IDENTITY_CODE, "010101-9001"));
        assert_eq!(a, spec().key_of(IDENTITY_CODE, "010101-9001"));
        assert!(!a.to_string().contains("9001"));
        assert!(matches!(
            JoinSpec::new(vec![1; 8], vec![], false),
            Err(JoinError::ShortKey(8))
        ));
    }

    #[test]
    fn joins_across_sources_and_applies_the_rules_within_one() {
        let plan = plan();
        let health = source(
            &plan,
            &[
                ("h1", person(Some("A"), &[], "2025-01-01")),
                ("h2", person(Some("B"), &[], "2025-01-01")),
                // B again, updated later: kept, h2 skipped.
                ("h3", person(Some("B"), &[], "2025-06-01")),
                ("h4", person(None, &[], "2025-01-01")),
                // Replaced by h1: merged into it.
                ("h5", person(None, &["Patient/h1"], "2025-01-01")),
            ],
        );
        let social = source(&plan, &[("s1", person(Some("A"), &[], "2025-01-01"))]);
        let joined = join(vec![health, social], std::slice::from_ref(&plan));
        let key_a = spec().key_of(IDENTITY_CODE, "A").to_string();
        let key_b = spec().key_of(IDENTITY_CODE, "B").to_string();
        let holders = |k: &str| holders(&joined, k);
        assert_eq!(holders(&key_a), [at(0, "h1"), at(1, "s1")]);
        assert_eq!(holders(&key_b), [at(0, "h3")]);
        assert_eq!(holders("0:h4"), [at(0, "h4")]);
        assert_eq!(joined.holders.len(), 3);
        assert_eq!(
            joined.clients[0][key_a.as_str()].resources,
            3,
            "h1, h5 and s1"
        );
        let report = &joined.report.sources[0];
        assert_eq!((report.patients, report.linked), (5, 1));
        assert_eq!(report.duplicates.len(), 1);
        assert_eq!(report.duplicates[0].kept, "h3");
        assert_eq!(report.duplicates[0].skipped, ["h2"]);
        assert_eq!(report.duplicates[0].identifier, None);
        assert_eq!(joined.report.in_several, 1);
    }

    #[test]
    fn links_to_patients_of_other_servers_merge_their_clients() {
        let plan = plan();
        let base = |s: &str| Some(format!("http://{s}.example/fhir/"));
        let mut health = source(
            &plan,
            &[
                ("h1", person(None, &[], "2025-01-01")),
                ("h2", person(Some("B"), &[], "2025-01-01")),
            ],
        );
        health.base = base("health");
        let mut social = source(
            &plan,
            &[
                // No identity code, but the same person as h1 on the health server.
                (
                    "s1",
                    person(
                        None,
                        &["http://health.example/fhir/Patient/h1"],
                        "2025-01-01",
                    ),
                ),
                // Links to a server that is not a source: not followed.
                (
                    "s2",
                    person(
                        None,
                        &["http://elsewhere.example/fhir/Patient/h1"],
                        "2025-01-01",
                    ),
                ),
                // B here too, and linked to h2, which is B already: nothing more to merge.
                (
                    "s3",
                    person(
                        Some("B"),
                        &["http://health.example/fhir/Patient/h2"],
                        "2025-01-01",
                    ),
                ),
            ],
        );
        social.base = base("social");
        let joined = join(vec![health, social], std::slice::from_ref(&plan));
        let holders = |k: &str| holders(&joined, k);
        assert_eq!(holders("0:h1"), [at(0, "h1"), at(1, "s1")]);
        assert_eq!(joined.clients[0]["0:h1"].resources, 2, "h1 and s1");
        assert!(!joined.clients[0].contains_key("1:s1"));
        assert_eq!(holders("1:s2"), [at(1, "s2")]);
        let key_b = spec().key_of(IDENTITY_CODE, "B").to_string();
        assert_eq!(holders(&key_b), [at(0, "h2"), at(1, "s3")]);
        assert_eq!(
            joined.report.linked_across, 1,
            "s3's link is already met by its key"
        );
        assert_eq!(joined.holders.len(), 3);
    }
}
