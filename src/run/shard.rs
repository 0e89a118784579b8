//! Splitting one population over several processes, and how they agree on what is
//! population-wide.
//!
//! A [`Shard`] `k/N` holds the clients whose patient id hashes to `k` modulo `N`, with a hash
//! whose value is fixed by its specification (XXH3-64, seed 0), so every process, version and
//! machine puts a client in the same shard. A client's resources all carry its patient id, so
//! a shard folds whole clients and N shards together write exactly what one run writes.
//!
//! The exception is the `top_percent` tests: their thresholds are percentiles of the whole
//! population. Shards agree on them through a cheap first pass: each shard writes its
//! [`ThresholdPart`] (the raw column of every percentile test, one number per client and
//! test), [`merge`] turns the parts into the thresholds an unsharded run would compute (the
//! nearest-rank percentile depends only on the multiset of values, so the merge is exact, not a
//! sketch), and every shard's run takes them with `--thresholds`. This module does no I/O
//! beyond reading and writing those two small files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::assess::thresholds::Threshold;
use crate::model::Plan;

/// One of `count` shards, numbered from 0 (as Kubernetes' `JOB_COMPLETION_INDEX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u64,
    count: u64,
}

impl Shard {
    /// Shard `index` of `count`; `None` unless `index < count`.
    fn new(index: u64, count: u64) -> Option<Self> {
        (index < count).then_some(Self { index, count })
    }

    /// Whether the client with this patient id belongs to this shard.
    pub(crate) fn holds(&self, patient: &str) -> bool {
        xxhash_rust::xxh3::xxh3_64(patient.as_bytes()) % self.count == self.index
    }

    /// Whether this is the first shard, which reports what belongs to no client (an
    /// unreadable line), so that N shards report it once.
    pub(crate) fn is_first(&self) -> bool {
        self.index == 0
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hint = "give the shard as k/N with 0 <= k < N, for example 0/4 (k is Kubernetes' JOB_COMPLETION_INDEX)";
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a shard: {hint}"))?;
        let parse = |v: &str| v.trim().parse::<u64>().ok();
        match (parse(k), parse(n)) {
            (Some(k), Some(n)) => {
                Shard::new(k, n).ok_or_else(|| format!("`{s}` is not a shard: {hint}"))
            }
            _ => Err(format!("`{s}` is not a shard: {hint}")),
        }
    }
}

/// One shard's share of the first pass: per model, the column of every `top_percent` test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThresholdPart {
    /// Always `segmentti-threshold-part`, so a thresholds file given here is caught.
    pub kind: String,
    /// The shard it covers (`k/N`), or `all`.
    pub shard: String,
    /// Per model id, one column per `top_percent` test, in the model's order.
    pub models: BTreeMap<String, Vec<Column>>,
}

/// The values of one feature over one shard's clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Feature id.
    pub feature: String,
    /// The top share, in percent.
    pub percent: f64,
    /// One value per client (0 where the feature has none).
    pub values: Vec<f64>,
}

const PART_KIND: &str = "segmentti-threshold-part";

/// Population thresholds per model id: what `--thresholds` reads and `thresholds --merge`
/// writes; the same shape as the checkpoint's.
pub type Thresholds = BTreeMap<String, Vec<Threshold>>;

/// Why threshold files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Reading or writing failed.
    #[error("cannot use {path}: {source}\nhint: check the path and permissions")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what was expected.
    #[error("{path} is not {expected}: {cause}\nhint: {hint}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What kind of file was expected.
        expected: &'static str,
        /// What is wrong.
        cause: String,
        /// What to do.
        hint: &'static str,
    },
    /// The parts do not cover the same tests.
    #[error(
        "the threshold parts disagree on model `{model}`: {cause}\nhint: make every part with the same mapping files"
    )]
    Mismatch {
        /// Model id.
        model: String,
        /// What differs.
        cause: String,
    },
    /// The parts are not every shard of one split, each once.
    #[error(
        "the threshold parts are not one whole population: {cause}\nhint: give the parts of every shard k/N (k = 0 … N-1), each once"
    )]
    Incomplete {
        /// What is missing or doubled.
        cause: String,
    },
    /// A model needs thresholds the file does not hold.
    #[error(
        "{path} holds no threshold for `{feature}` top {percent} % of model `{model}`\nhint: make the thresholds with the same mapping files as the run"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// Model id.
        model: String,
        /// Feature id.
        feature: String,
        /// The top share.
        percent: f64,
    },
}

impl ThresholdPart {
    /// A part holding `columns` for each plan (`columns[i]` belongs to `plans[i]`).
    pub fn new(shard: Option<Shard>, plans: &[Plan], columns: Vec<Vec<Vec<f64>>>) -> Self {
        let models = plans
            .iter()
            .zip(columns)
            .map(|(plan, columns)| {
                let columns = plan
                    .percentiles
                    .iter()
                    .zip(columns)
                    .map(|(&(f, percent), values)| Column {
                        feature: plan.features[f].id.clone(),
                        percent,
                        values,
                    })
                    .collect();
                (plan.mapping.id.to_string(), columns)
            })
            .collect();
        Self {
            kind: PART_KIND.to_owned(),
            shard: shard.map_or_else(|| "all".to_owned(), |s| s.to_string()),
            models,
        }
    }

    /// Reads a part written by `thresholds --shard`.
    pub fn read(path: &Path) -> Result<Self, ShardError> {
        let part: Self = read_json(path, "a threshold part", PART_HINT)?;
        if part.kind != PART_KIND {
            return Err(ShardError::Invalid {
                path: path.to_owned(),
                expected: "a threshold part",
                cause: format!("its kind is `{}`", part.kind),
                hint: PART_HINT,
            });
        }
        Ok(part)
    }
}

const PART_HINT: &str = "make parts with `segmentti thresholds --shard k/N --out FILE`";
const THRESHOLDS_HINT: &str = "make it with `segmentti thresholds --merge PART... --out FILE`, or take the `thresholds` of a full run's summary";

/// The thresholds an unsharded run over the union of the parts' clients would compute. The
/// parts must be every shard of one split, each once: a missing shard would silently shift
/// every percentile.
pub fn merge(parts: Vec<ThresholdPart>) -> Result<Thresholds, ShardError> {
    check_complete(&parts)?;
    let mut merged: BTreeMap<String, Vec<Column>> = BTreeMap::new();
    for part in parts {
        for (model, columns) in part.models {
            let Some(into) = merged.get_mut(&model) else {
                merged.insert(model, columns);
                continue;
            };
            if into.len() != columns.len() {
                return Err(ShardError::Mismatch {
                    model,
                    cause: format!("{} against {} percentile tests", into.len(), columns.len()),
                });
            }
            for (a, b) in into.iter_mut().zip(columns) {
                if a.feature != b.feature || a.percent != b.percent {
                    return Err(ShardError::Mismatch {
                        model,
                        cause: format!(
                            "`{}` top {} % against `{}` top {} %",
                            a.feature, a.percent, b.feature, b.percent
                        ),
                    });
                }
                a.values.extend(b.values);
            }
        }
    }
    Ok(merged
        .into_iter()
        .map(|(model, columns)| {
            let thresholds = columns
                .into_iter()
                .map(|c| Threshold {
                    value: crate::assess::eval::top_cut(c.values, c.percent),
                    feature: c.feature,
                    percent: c.percent,
                })
                .collect();
            (model, thresholds)
        })
        .collect())
}

fn check_complete(parts: &[ThresholdPart]) -> Result<(), ShardError> {
    let incomplete = |cause: String| Err(ShardError::Incomplete { cause });
    if parts.len() == 1 && parts[0].shard == "all" {
        return Ok(());
    }
    let mut seen = BTreeSet::new();
    let mut count = None;
    for part in parts {
        let Ok(shard) = part.shard.parse::<Shard>() else {
            return incomplete(format!("a part covers `{}`, not one shard", part.shard));
        };
        if *count.get_or_insert(shard.count) != shard.count {
            return incomplete(format!(
                "parts of {} and of {} shards",
                count.unwrap_or(0),
                shard.count
            ));
        }
        if !seen.insert(shard.index) {
            return incomplete(format!("shard {shard} is given twice"));
        }
    }
    let count = count.unwrap_or(0);
    if seen.len() as u64 != count {
        let missing: Vec<String> = (0..count)
            .filter(|k| !seen.contains(k))
            .map(|k| format!("{k}/{count}"))
            .collect();
        return incomplete(format!("shard(s) {} missing", missing.join(", ")));
    }
    Ok(())
}

/// Reads a thresholds file and checks that it covers every `top_percent` test of `plans`.
pub fn read_thresholds(path: &Path, plans: &[Plan]) -> Result<Thresholds, ShardError> {
    let thresholds: Thresholds = read_json(path, "a thresholds file", THRESHOLDS_HINT)?;
    for plan in plans {
        for &(f, percent) in &plan.percentiles {
            let feature = &plan.features[f].id;
            let found = thresholds.get(plan.mapping.id.as_str()).is_some_and(|ts| {
                ts.iter()
                    .any(|t| &t.feature == feature && t.percent == percent)
            });
            if !found {
                return Err(ShardError::Missing {
                    path: path.to_owned(),
                    model: plan.mapping.id.to_string(),
                    feature: feature.clone(),
                    percent,
                });
            }
        }
    }
    Ok(thresholds)
}

/// Writes `value` as JSON, through a temporary file renamed into place.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ShardError> {
    let io = |source| ShardError::Io {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec(value).map_err(|e| io(e.into()))?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    expected: &'static str,
    hint: &'static str,
) -> Result<T, ShardError> {
    let text = std::fs::read(path).map_err(|source| ShardError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ShardError::Invalid {
        path: path.to_owned(),
        expected,
        cause: e.to_string(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!(
            "1/4".parse::<Shard>().map(|s| s.to_string()),
            Ok("1/4".into())
        );
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            let e = bad.parse::<Shard>().expect_err(bad);
            assert!(e.contains("k/N"), "{e}");
        }
        let shards: Vec<Shard> = (0..3).filter_map(|k| Shard::new(k, 3)).collect();
        let mut sizes = [0usize; 3];
        for i in 0..3000 {
            let id = format!("p{i:07}");
            let holders: Vec<usize> = (0..3).filter(|&k| shards[k].holds(&id)).collect();
            assert_eq!(holders.len(), 1, "{id} must be in exactly one shard");
            sizes[holders[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 900), "uneven shards: {sizes:?}");
    }

    #[test]
    fn the_hash_is_fixed_by_its_specification() {
        // A changed hash would silently move clients between shards of a running deployment.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"p0000000") % 4, 1);
    }

    #[test]
    fn merged_parts_give_the_whole_population_percentile() {
        let part = |shard: &str, values: Vec<f64>| ThresholdPart {
            kind: PART_KIND.into(),
            shard: shard.into(),
            models: BTreeMap::from([(
                "m".to_owned(),
                vec![Column {
                    feature: "cost".into(),
                    percent: 10.0,
                    values,
                }],
            )]),
        };
        let all: Vec<f64> = (1..=20).map(f64::from).collect();
        let whole = crate::assess::eval::top_cut(all.clone(), 10.0);
        let merged = merge(vec![
            part(
                "0/2",
                all.iter().copied().filter(|v| v % 2.0 == 0.0).collect(),
            ),
            part(
                "1/2",
                all.iter().copied().filter(|v| v % 2.0 != 0.0).collect(),
            ),
        ])
        .expect("parts of the same model merge");
        assert_eq!(merged["m"][0].value, whole);
        assert_eq!(whole, Some(19.0));
        let mut other = part("1/2", vec![1.0]);
        other.models.get_mut("m").expect("model m")[0].percent = 5.0;
        let e = merge(vec![part("0/2", vec![]), other]).expect_err("different tests");
        assert!(e.to_string().contains("top 10 %"), "{e}");
        let e = merge(vec![part("0/3", vec![]), part("2/3", vec![])]).expect_err("a shard missing");
        assert!(e.to_string().contains("1/3 missing"), "{e}");
        let e = merge(vec![part("0/2", vec![]), part("0/2", vec![])]).expect_err("twice");
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
