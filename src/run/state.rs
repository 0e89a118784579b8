//! The checkpoint of incremental runs against a server (`--state FILE`): the high-water mark
//! from which the next run asks for changes, and the population thresholds of the last full
//! run (an incremental run re-evaluates only changed clients, who are no population). Written
//! atomically (a temporary file renamed into place) and only after a run completed, so a run
//! killed at any moment leaves the previous checkpoint, and rerunning redoes idempotent work.
//! How a completed run moves it on (`State::advance`, `keep_thresholds`) is here once, for
//! every kind of run; when a run may move it on is the run's to decide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::assess::thresholds::Threshold;
use crate::run::summary::ModelSummary;

/// What a completed run leaves for the next one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The server the checkpoint belongs to.
    pub server: String,
    /// Ask for resources updated at or after this instant (RFC 3339).
    pub since: Option<String>,
    /// Per model id, the `top_percent` thresholds of the last full run.
    #[serde(default)]
    pub thresholds: BTreeMap<String, Vec<Threshold>>,
}

/// Why the checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("cannot use the state file {path}: {source}\nhint: check the path and permissions")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a checkpoint.
    #[error(
        "the state file {path} is not a segmentti checkpoint: {cause}\nhint: move it away to start with a full run"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        cause: String,
    },
}

impl State {
    /// Reads the checkpoint at `path`; `None` when there is none yet.
    pub fn read(path: &Path) -> Result<Option<State>, StateError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StateError::Invalid {
                    path: path.to_owned(),
                    cause: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Moves the checkpoint on after a completed run against `server`: changes are next read
    /// from `since` (`None`: the next run reads everything), and the population thresholds of `full_run`'s models replace theirs (pass
    /// the models of a full run; none for an incremental one, whose clients are no population).
    pub(crate) fn advance<'a>(
        &mut self,
        server: &str,
        since: Option<String>,
        full_run: impl IntoIterator<Item = &'a ModelSummary>,
    ) {
        server.clone_into(&mut self.server);
        self.since = since;
        keep_thresholds(&mut self.thresholds, full_run);
    }

    /// Writes the checkpoint to `path` atomically.
    pub(crate) fn write(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("partial");
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Invalid {
            path: path.to_owned(),
            cause: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Puts a full run's population thresholds in `into`, per model; models the run did not
/// evaluate keep theirs.
pub(crate) fn keep_thresholds<'a>(
    into: &mut BTreeMap<String, Vec<Threshold>>,
    models: impl IntoIterator<Item = &'a ModelSummary>,
) {
    for summary in models {
        into.insert(summary.model.clone(), summary.thresholds.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_no_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        assert_eq!(State::read(&path).expect("read"), None);
        let state = State {
            server: "http://127.0.0.1:1/".into(),
            since: Some("2026-01-01T00:00:00Z".into()),
            thresholds: BTreeMap::new(),
        };
        state.write(&path).expect("write");
        assert_eq!(State::read(&path).expect("read"), Some(state));
        std::fs::write(&path, "{").expect("write");
        assert!(matches!(
            State::read(&path),
            Err(StateError::Invalid { .. })
        ));
    }
}
