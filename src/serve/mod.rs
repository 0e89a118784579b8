//! `segmentti serve`: one long-running process that runs incremental segmentation on a
//! schedule, answers CDS Hooks 2.0 `patient-view` calls with one card per model, and exposes
//! `/healthz`, `/readyz` and `/metrics`. It owns the process's life: listeners, the schedule,
//! SIGTERM. It reads and writes FHIR only through [`crate::job`] (runs) and the trusted
//! server's [`crate::fhir::FhirClient`] (cards), and evaluates through [`crate::pipeline`].
//!
//! - [`config`]: file + environment + command line → checked [`config::Settings`].
//! - [`cds`]: discovery, the service, feedback, explanation links.
//! - [`jwt`]: the CDS Hooks token check (issuer's JWKS, `aud`, `exp`, `jti` replay).
//! - [`metrics`]: counters and the Prometheus text.
//!
//! Runs never overlap: one task runs them one after another, and a tick that falls while a run
//! is under way is skipped. On SIGTERM (or Ctrl-C) the listeners stop taking calls, a run under
//! way finishes (its writes are transactions per batch, and its checkpoint is saved), and the
//! process exits 0. A run cannot be cut short: stopping between batches would leave clients of
//! one run on two assessments.
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the FHIR server answers `/metadata` and the last run succeeded, or failed less than `grace_minutes` after the last success (or start); else 503 with the reason |
//! | `GET /metrics` | Prometheus text, see [`metrics`] |

pub mod cds;
pub mod config;
pub mod jwt;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

use crate::day::Day;
use crate::fhir::{ClientOptions, FhirClient, FhirError, new_correlation_id};
use crate::job::{self, JobError, JobOptions};
use crate::model::{MappingError, Plan};
use crate::pipeline::{OnInvalid, Threshold};
use crate::source::search::SearchOptions;
use crate::state::{State as Checkpoint, StateError};
use config::{CdsAuth, Settings};

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A mapping file could not be compiled.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The checkpoint could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}\nhint: is another process using the port?")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the service stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The configuration.
    pub settings: Settings,
    /// The URL callers use, ending in `/`: `aud` of tokens, base of links.
    pub public_url: url::Url,
    /// The counters.
    pub metrics: metrics::Metrics,
    /// `None`: `insecure_no_auth`.
    pub verifier: Option<jwt::Verifier>,
    explanations: cds::Explanations,
    plans: Mutex<Option<(Day, Arc<Vec<Plan>>)>>,
    thresholds: RwLock<BTreeMap<String, Vec<Threshold>>>,
    runs: Mutex<RunStatus>,
}

#[derive(Debug)]
struct RunStatus {
    /// Last success, or the start before the first.
    since_ok: Instant,
    last_failed: bool,
}

impl AppState {
    /// The models compiled for today (recompiled when the day changes, since windows end today).
    pub fn plans(&self) -> Result<Arc<Vec<Plan>>, MappingError> {
        let today = Day::from_date(time::OffsetDateTime::now_utc().date());
        let mut cached = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((day, plans)) = cached.as_ref()
            && *day == today
        {
            return Ok(plans.clone());
        }
        let plans: Vec<Plan> = self
            .settings
            .models
            .iter()
            .map(|p| crate::model::plan_file(p, today))
            .collect::<Result<_, _>>()?;
        let plans = Arc::new(plans);
        *cached = Some((today, plans.clone()));
        Ok(plans)
    }

    /// The population thresholds of the last full run, per model id.
    pub fn thresholds(&self) -> BTreeMap<String, Vec<Threshold>> {
        self.thresholds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `server` (a request's `fhirServer`) is the configured server.
    pub fn trusts(&self, server: &str) -> bool {
        let normal = |u: &url::Url| u.as_str().trim_end_matches('/').to_owned();
        url::Url::parse(server).is_ok_and(|u| normal(&u) == normal(&self.settings.server))
    }

    fn client(&self, correlation_id: String) -> Result<FhirClient, FhirError> {
        let mut options = ClientOptions::new(correlation_id);
        options.timeout = self.settings.timeout;
        options.bearer = self.settings.bearer.clone();
        options.smart = self.settings.smart.clone();
        options.tls = self.settings.tls.clone();
        FhirClient::new(self.settings.server.clone(), options)
    }
}

/// The CDS Hooks routes (`/cds-services`, `/explanations`).
pub fn cds_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/cds-services", get(cds::discovery))
        .route("/cds-services/{id}", post(cds::call))
        .route("/cds-services/{id}/feedback", post(cds::feedback))
        .route("/explanations/{id}", get(cds::explanation))
        .layer(DefaultBodyLimit::max(state.settings.max_body))
        .with_state(state)
}

/// The operations routes (`/healthz`, `/readyz`, `/metrics`).
pub fn ops_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let (since_ok, failed) = {
        let runs = state.runs.lock().unwrap_or_else(|p| p.into_inner());
        (runs.since_ok, runs.last_failed)
    };
    if failed && since_ok.elapsed() > state.settings.grace {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the last run failed and the grace period has passed\n".to_owned(),
        );
    }
    let reachable = match state.client(new_correlation_id()) {
        Ok(client) => tokio::time::timeout(Duration::from_secs(5), client.capabilities()).await,
        Err(e) => Ok(Err(e)),
    };
    match reachable {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the FHIR server does not answer: {}\n",
                e.to_string().lines().next().unwrap_or_default()
            ),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the FHIR server did not answer within 5 s\n".to_owned(),
        ),
    }
}

/// Runs the service until SIGTERM or Ctrl-C. Prints the bound addresses on stderr.
pub async fn run(settings: Settings) -> Result<(), ServeError> {
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })
    };
    let listener = bind(settings.listen).await?;
    let ops_listener = match settings.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let bound = listener.local_addr()?;
    let public_url = match &settings.public_url {
        Some(u) if u.path().ends_with('/') => u.clone(),
        Some(u) => url::Url::parse(&format!("{u}/")).unwrap_or_else(|_| u.clone()),
        None => url::Url::parse(&format!("http://{bound}/"))
            .map_err(|e| std::io::Error::other(e.to_string()))?,
    };
    let verifier = match &settings.auth {
        CdsAuth::Insecure => {
            warn!(
                "insecure_no_auth: CDS Hooks calls are accepted WITHOUT a signed token; for local trials only"
            );
            eprintln!(
                "WARNING: --insecure-no-auth: anyone who reaches {bound} can ask for any client's segment"
            );
            None
        }
        CdsAuth::Issuers(issuers) => {
            if settings.public_url.is_none() {
                // The default is only right when the EHR calls this very address.
                warn!(aud = %public_url, "public_url is not set: tokens must carry this audience");
            }
            Some(jwt::Verifier::new(issuers.clone()))
        }
    };
    let mut thresholds = BTreeMap::new();
    if let Some(path) = &settings.state
        && let Some(checkpoint) = Checkpoint::read(path)?
        && checkpoint.server == settings.server.as_str()
    {
        thresholds = checkpoint.thresholds;
    }
    let state = Arc::new(AppState {
        public_url,
        metrics: metrics::Metrics::default(),
        verifier,
        explanations: cds::Explanations::default(),
        plans: Mutex::new(None),
        thresholds: RwLock::new(thresholds),
        runs: Mutex::new(RunStatus {
            since_ok: Instant::now(),
            last_failed: false,
        }),
        settings,
    });
    state.plans()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut app = cds_app(state.clone());
    let mut servers = Vec::new();
    match ops_listener {
        Some(ops) => {
            eprintln!(
                "segmentti serve: health and metrics on http://{}/",
                ops.local_addr()?
            );
            servers.push(tokio::spawn(
                axum::serve(ops, ops_app(state.clone()))
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            ));
        }
        None => app = app.merge(ops_app(state.clone())),
    }
    eprintln!("segmentti serve: CDS Hooks on http://{bound}/cds-services");
    servers.push(tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    ));
    let scheduler = tokio::spawn(schedule(state.clone(), stop_rx.clone()));
    wait_for_signal().await;
    info!("stopping: no new calls or runs; a run under way finishes first");
    let _ = stop_tx.send(true);
    for server in servers {
        server.await.map_err(std::io::Error::other)??;
    }
    scheduler.await.map_err(std::io::Error::other)?;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs on the schedule, one run at a time, until told to stop.
async fn schedule(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let Some((text, cron)) = state.settings.schedule.clone() else {
        return;
    };
    info!(schedule = %text, "runs scheduled (UTC)");
    loop {
        let now = chrono::Utc::now();
        let Ok(next) = cron.find_next_occurrence(&now, false) else {
            warn!(schedule = %text, "the schedule has no next time; no more runs");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Awaited to the end even when a stop arrives meanwhile: see the module docs.
        run_once(&state).await;
        if *stop.borrow() {
            return;
        }
    }
}

/// One run, with its own correlation id, off the async workers.
async fn run_once(state: &Arc<AppState>) {
    let correlation_id = new_correlation_id();
    let span = info_span!("run", correlation_id = %correlation_id);
    state.metrics.run_started();
    let started = Instant::now();
    let worker = state.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<job::JobReport, String> {
        let plans = worker.plans().map_err(|e| e.to_string())?;
        let options = JobOptions {
            client: worker.client(correlation_id).map_err(|e| e.to_string())?,
            server: worker.settings.server.clone(),
            search: SearchOptions {
                page_size: worker.settings.page_size,
                concurrency: worker.settings.concurrency,
                patients: Vec::new(),
                since: None,
            },
            batch: worker.settings.batch,
            dry_run: false,
            state: worker.settings.state.clone(),
            on_invalid: OnInvalid::Skip,
        };
        job::run(&options, &plans).map_err(|e: JobError| e.to_string())
    })
    .instrument(span.clone())
    .await
    .unwrap_or_else(|e| Err(format!("the run panicked: {e}")));
    let _entered = span.enter();
    let unix = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let mut runs = state.runs.lock().unwrap_or_else(|p| p.into_inner());
    match &result {
        Ok(report) => {
            if report.since.is_none() {
                let mut t = state.thresholds.write().unwrap_or_else(|p| p.into_inner());
                for (summary, _) in &report.models {
                    t.insert(summary.model.clone(), summary.thresholds.clone());
                }
            }
            let refused = report.refused();
            if refused > 0 {
                // The checkpoint stays where it was, so the next run tries these clients again.
                error!(refused, "the server refused some clients' results");
            }
            info!(
                read = report.read,
                elapsed_ms = started.elapsed().as_millis() as u64,
                checkpoint = report.checkpoint_saved,
                "run done"
            );
            runs.since_ok = Instant::now();
            runs.last_failed = false;
        }
        Err(e) => {
            error!(error = %e, "run failed");
            runs.last_failed = true;
        }
    }
    state
        .metrics
        .run_ended(started.elapsed(), result.as_ref().ok(), unix);
}
