//! A live FHIR server through paged search: Patients page by page (`_count`, following `next`
//! links on the same origin only), then for each page of Patients their resources of every type
//! the models read (`patient=Patient/a,Patient/b`, typed for an indexed match: see
//! [`patient_references`]): Encounters and Conditions always, Observations, EpisodeOfCares,
//! Claims and ExplanationOfBenefits only for a model that names them, so a model without such
//! features makes no request more. Several pages of Patients are read at once
//! (`--concurrency`). Each page is handed on as soon as it has arrived, so memory holds a few
//! pages, not the server.
//!
//! A server that does not search one of the optional types (it answers 404 or 400, as a server
//! without Claims or with no `patient` parameter on them does) is warned about once, by type and
//! status, and its clients are assessed as having none of that type: what a mapping's
//! `if_absent` (or, for bills, the price table) says. Encounter and Condition stay required.
//!
//! An incremental run (`since`) first asks which clients have anything newer (`_lastUpdated`
//! on Patient and on every type read) and then reads those clients' whole history: a segment
//! depends on all of it, not on the changes alone.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt, stream};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::{Batch, Item, Origin, Payload};
use crate::fhir::types::ResourceKind;
use crate::fhir::{FhirClient, FhirError, matches, patient_references};
use crate::record::extract::patient_id;

/// How to read.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Resources per page (`_count`).
    pub page_size: u32,
    /// Patient pages read at once.
    pub concurrency: usize,
    /// Only these Patients (`--patient`), when given.
    pub patients: Vec<String>,
    /// Only clients with anything updated at or after this instant (`_lastUpdated=ge…`).
    pub since: Option<String>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            page_size: 100,
            concurrency: 4,
            patients: Vec::new(),
            since: None,
        }
    }
}

/// The `_count` of a page of Patients' Encounters or Conditions: ten times `page_size`, since a
/// page of clients has many more of them than Patients (25 each in the synthetic population).
/// Every page costs a server the search itself, so fewer, larger pages read faster. A server
/// that allows fewer per page says so by paging (its own maximum).
pub fn related_page_size(page_size: u32) -> u32 {
    page_size.saturating_mul(10)
}

/// Why reading a server failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A request failed (after its retries).
    #[error(transparent)]
    Fhir(#[from] FhirError),
    /// The consumer stopped the read.
    #[error("reading stopped: {0}")]
    Stopped(String),
}

/// Reads the clients of `client` per `options` with their resources of `kinds` (the types the
/// models read; Patient is read in any case), handing batches of items to `emit`.
pub async fn read(
    client: &FhirClient,
    options: &SearchOptions,
    kinds: &[ResourceKind],
    emit: &mut (dyn FnMut(Batch) -> Result<(), String> + Send),
) -> Result<(), SearchError> {
    let size = options.page_size.to_string();
    let related = Related {
        kinds: kinds
            .iter()
            .copied()
            .filter(|k| *k != ResourceKind::Patient)
            .collect(),
        size: related_page_size(options.page_size).to_string(),
        unsearchable: Mutex::new(Vec::new()),
    };
    let chosen: Option<Vec<String>> = match &options.since {
        Some(since) => Some(changed_since(client, since, kinds, &size).await?),
        None if !options.patients.is_empty() => Some(options.patients.clone()),
        None => None,
    };
    let origin: Arc<str> = Arc::from(client.base().as_str());
    let mut patient_pages: Vec<Vec<Value>> = Vec::new();
    match chosen {
        None => {
            let mut pages = client.pages("Patient", &[("_count", size.as_str())])?;
            // Read Patient pages ahead in groups so that their Encounters and Conditions can be
            // fetched concurrently.
            loop {
                let page = pages.next_page().await.transpose()?;
                if let Some(page) = &page {
                    patient_pages.push(matches(page).cloned().collect());
                }
                if patient_pages.len() >= options.concurrency
                    || (page.is_none() && !patient_pages.is_empty())
                {
                    let group = std::mem::take(&mut patient_pages);
                    emit_group(client, group, &related, options.concurrency, &origin, emit).await?;
                }
                if page.is_none() {
                    break;
                }
            }
        }
        Some(ids) => {
            info!(clients = ids.len(), "reading selected clients");
            let chunks: Vec<Vec<String>> = ids
                .chunks(options.page_size.max(1) as usize)
                .map(<[String]>::to_vec)
                .collect();
            for group in chunks.chunks(options.concurrency.max(1)) {
                let mut fetched = Vec::new();
                for ids in group {
                    let joined = ids.join(",");
                    let params = [("_id", joined.as_str()), ("_count", size.as_str())];
                    fetched.push(all_matches(client, "Patient", &params).await?);
                }
                emit_group(
                    client,
                    fetched,
                    &related,
                    options.concurrency,
                    &origin,
                    emit,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// What is read for each page of Patients: resources of these types, `size` per page.
struct Related {
    kinds: Vec<ResourceKind>,
    size: String,
    /// Optional types the server refused to search; asked for no more.
    unsearchable: Mutex<Vec<ResourceKind>>,
}

impl Related {
    fn searchable(&self, kind: ResourceKind) -> bool {
        !self
            .unsearchable
            .lock()
            .is_ok_and(|refused| refused.contains(&kind))
    }

    /// Whether `e`, the answer to a search of `kind`, means the server holds none to search:
    /// 404 or 400 on a type beside Patient, Encounter and Condition. Warns the first time.
    fn refused(&self, kind: ResourceKind, e: &FhirError) -> bool {
        let status = e.status().map(|s| s.as_u16());
        if ResourceKind::CORE.contains(&kind) || !matches!(status, Some(400 | 404)) {
            return false;
        }
        if let Ok(mut refused) = self.unsearchable.lock()
            && !refused.contains(&kind)
        {
            refused.push(kind);
            warn!(resource_type = %kind, status, "the server does not search this type by patient; its clients are assessed as having none");
        }
        true
    }
}

/// Emits a group of Patient pages and, fetched concurrently, their related resources.
async fn emit_group(
    client: &FhirClient,
    pages: Vec<Vec<Value>>,
    related: &Related,
    concurrency: usize,
    origin: &Arc<str>,
    emit: &mut (dyn FnMut(Batch) -> Result<(), String> + Send),
) -> Result<(), SearchError> {
    let fetched: Vec<Vec<Value>> = stream::iter(pages.iter())
        .map(|patients| async move {
            let joined = patient_references(patients.iter().filter_map(|p| p.get("id")?.as_str()));
            let mut out = Vec::new();
            if joined.is_empty() {
                return Ok::<_, FhirError>(out);
            }
            // Every type read has a `patient` search parameter (R4), whether its element is
            // `subject` or `patient`.
            let params = [
                ("patient", joined.as_str()),
                ("_count", related.size.as_str()),
            ];
            for kind in related.kinds.iter().filter(|k| related.searchable(**k)) {
                match all_matches(client, kind.as_str(), &params).await {
                    Ok(found) => out.extend(found),
                    Err(e) if related.refused(*kind, &e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    for (patients, related) in pages.into_iter().zip(fetched) {
        debug!(
            patients = patients.len(),
            related = related.len(),
            "page read"
        );
        let items = patients
            .into_iter()
            .chain(related)
            .enumerate()
            .map(|(i, value)| Item {
                origin: Origin {
                    file: origin.clone(),
                    line: i as u64,
                    entry: true,
                },
                payload: Payload::Value(value),
            })
            .collect();
        emit(Batch::Items(items)).map_err(SearchError::Stopped)?;
    }
    Ok(())
}

/// Every match of a search, across all its pages.
async fn all_matches(
    client: &FhirClient,
    resource_type: &str,
    params: &[(&str, &str)],
) -> Result<Vec<Value>, FhirError> {
    let mut pages = client.pages(resource_type, params)?;
    let mut out = Vec::new();
    while let Some(page) = pages.next_page().await {
        out.extend(
            matches(&page?)
                .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(resource_type))
                .cloned(),
        );
    }
    Ok(out)
}

/// The ids of clients with a Patient or a resource of `kinds` updated at or after `since`.
async fn changed_since(
    client: &FhirClient,
    since: &str,
    kinds: &[ResourceKind],
    size: &str,
) -> Result<Vec<String>, FhirError> {
    let filter = format!("ge{since}");
    let mut ids = BTreeSet::new();
    let others = kinds.iter().filter(|k| **k != ResourceKind::Patient);
    for kind in std::iter::once(&ResourceKind::Patient).chain(others) {
        let params = [("_lastUpdated", filter.as_str()), ("_count", size)];
        for r in all_matches(client, kind.as_str(), &params).await? {
            let id = if *kind == ResourceKind::Patient {
                r.get("id").and_then(Value::as_str)
            } else {
                r.get(kind.client_element())
                    .and_then(|c| c.get("reference"))
                    .and_then(Value::as_str)
                    .and_then(patient_id)
            };
            if let Some(id) = id {
                ids.insert(id.to_owned());
            }
        }
    }
    info!(
        clients = ids.len(),
        since, "clients changed since the last run"
    );
    Ok(ids.into_iter().collect())
}
