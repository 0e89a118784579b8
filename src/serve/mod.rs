//! `segmentti serve`: one long-running process that runs incremental segmentation on a
//! schedule, answers CDS Hooks 2.0 `patient-view` calls with one card per model, and exposes
//! `/healthz`, `/readyz` and `/metrics`. It owns the process's life: listeners, the schedule,
//! SIGTERM. It reads and writes FHIR only through [`crate::run::job`] (runs) and the trusted
//! server's [`crate::fhir::FhirClient`] (cards), and evaluates through [`crate::run::pipeline`].
//!
//! - [`config`]: file + environment + command line → checked [`config::Settings`].
//! - [`cds`]: discovery, the service, feedback, explanation links.
//! - `jwt`: the CDS Hooks token check (issuer's JWKS, `aud`, `exp`, `nbf`, `iat`, `jti` replay).
//! - `metrics`: counters and the Prometheus text.
//!
//! Runs never overlap: one task runs them one after another, and a tick that falls while a run
//! is under way is skipped. On SIGTERM (or Ctrl-C) the listeners stop taking calls, a run under
//! way finishes (its writes are transactions per batch, and its checkpoint is saved), and the
//! process exits 0. A run cannot be cut short: stopping between batches would leave clients of
//! one run on two assessments.
//!
//! | tick of | run |
//! |---|---|
//! | `schedule` | incremental: the clients changed since the checkpoint, with the thresholds of the last full run (a full run while there is no checkpoint) |
//! | `full_schedule` (nightly, 02:00 UTC, by default when there is a `schedule`) | a full pass: every client assessed again as of today, so a segment whose evidence has left its window (a last contact over 12 months ago) moves on with no new data; its population thresholds are saved in the checkpoint and used by cards |
//! | both at once | the full pass; one that fell due during a run is made when it ends, and a failed one again at the next `schedule` tick |
//!
//! Each listener bounds what one caller can hold ([`config::Limits`]): a connection that has not
//! sent a request's headers within `header_timeout_seconds` is closed, a request not answered
//! within `request_timeout_seconds` gets 503, and connections beyond `max_connections` are
//! closed as soon as they are accepted. With `metrics_listen`, health has a listener of its own
//! that a flood of the CDS Hooks one cannot reach. The FHIR server is reached through one
//! [`FhirClient`] for the life of the process (one token, one connection pool).
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the FHIR server answers `/metadata` (asked at most every `PROBE_TTL`) and the last run succeeded, or failed less than `grace_minutes` after the last success (or start); else 503 with the reason |
//! | `GET /metrics` | Prometheus text, see `metrics`; on the CDS Hooks listener only with `metrics_token` as a bearer token, and without one not at all |

pub mod cds;
pub mod config;
pub(crate) mod jwt;
mod metrics;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::assess::thresholds::Threshold;
use crate::fhir::day::Day;
use crate::fhir::{ClientOptions, FhirClient, FhirError, RetryPolicy, new_correlation_id};
use crate::model::{MappingError, Plan};
use crate::run::job::{self, JobError, JobOptions};
use crate::run::pipeline::OnInvalid;
use crate::run::state::{State as Checkpoint, StateError, keep_thresholds};
use crate::source::search::SearchOptions;
use config::{CdsAuth, Limits, Settings};

/// How long one answer of the FHIR server to `/readyz`'s probe stands for the next ones, so
/// that unauthenticated probes cannot drive load on the server or its token endpoint.
const PROBE_TTL: Duration = Duration::from_secs(5);

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
    /// The client of the FHIR server could not be built (its TLS files, its credentials).
    #[error(transparent)]
    Fhir(#[from] FhirError),
    /// Serving failed.
    #[error("the service stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    /// The configuration.
    pub settings: Settings,
    /// The URL callers use, ending in `/`: `aud` of tokens, base of links.
    pub public_url: url::Url,
    /// The counters.
    pub metrics: metrics::Metrics,
    /// `None`: `insecure_no_auth`.
    pub verifier: Option<jwt::Verifier>,
    explanations: cds::Explanations,
    /// CDS calls parsed or evaluated at once: one core fewer than the machine has (at least
    /// one), so that the runtime's workers always find a core for `/healthz` and the rest.
    evaluations: Arc<Semaphore>,
    /// The one client of the configured server; calls and runs take [`FhirClient::for_call`]s.
    fhir: FhirClient,
    /// The last answer to `/readyz`'s probe: when, and why not, if it failed. Held while a
    /// probe is under way, so that concurrent `/readyz` calls wait for one probe.
    probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    plans: Mutex<Option<(Day, Arc<Vec<Plan>>)>>,
    thresholds: RwLock<BTreeMap<String, Vec<Threshold>>>,
    runs: Mutex<RunStatus>,
}

#[derive(Debug)]
struct RunStatus {
    /// Last success, or the start before the first.
    since_ok: Instant,
    /// Why the last run failed; `None` when it succeeded (or none has run).
    last_failed: Option<String>,
}

impl AppState {
    /// The models compiled for today (recompiled when the day changes, since windows end today).
    pub(crate) fn plans(&self) -> Result<Arc<Vec<Plan>>, MappingError> {
        let today = self
            .settings
            .as_of
            .unwrap_or_else(|| Day::from_date(time::OffsetDateTime::now_utc().date()));
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
    pub(crate) fn thresholds(&self) -> BTreeMap<String, Vec<Threshold>> {
        self.thresholds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The process's client of the server, for a run with its own correlation id.
    fn client(&self, correlation_id: String) -> Result<FhirClient, FhirError> {
        self.fhir
            .for_call(&correlation_id, RetryPolicy::default(), None)
    }

    /// Whether the FHIR server answers `/metadata`, asked at most once per [`PROBE_TTL`].
    async fn server_answers(&self) -> Result<(), String> {
        let mut last = self.probe.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < PROBE_TTL
        {
            return answer.clone();
        }
        let answer = match self.client(new_correlation_id()) {
            Ok(client) => {
                match tokio::time::timeout(Duration::from_secs(5), client.capabilities()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!(
                        "the FHIR server does not answer: {}",
                        e.to_string().lines().next().unwrap_or_default()
                    )),
                    Err(_) => Err("the FHIR server did not answer within 5 s".to_owned()),
                }
            }
            Err(e) => Err(format!(
                "the FHIR server does not answer: {}",
                e.to_string().lines().next().unwrap_or_default()
            )),
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// The process's one client of `settings.server`.
fn server_client(settings: &Settings) -> Result<FhirClient, FhirError> {
    let mut options = ClientOptions::new(new_correlation_id());
    options.timeout = settings.timeout;
    options.bearer = settings.bearer.clone();
    options.smart = settings.smart.clone();
    options.tls = settings.tls.clone();
    FhirClient::new(settings.server.clone(), options)
}

/// The CDS Hooks routes (`/cds-services`, `/explanations`).
fn cds_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/cds-services", get(cds::discovery))
        .route("/cds-services/{id}", post(cds::call))
        .route("/cds-services/{id}/feedback", post(cds::feedback))
        .route("/explanations/{id}", get(cds::explanation))
        .layer(DefaultBodyLimit::max(state.settings.max_body))
        .with_state(state)
}

/// The operations routes (`/healthz`, `/readyz`, and `/metrics` when it may be served: see
/// the module docs).
fn ops_app(state: Arc<AppState>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if state.settings.metrics_listen.is_some() || state.settings.metrics_token.is_some() {
        app = app.route("/metrics", get(metrics_text));
    }
    app.with_state(state)
}

async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    // On its own listener, /metrics is as open as the listener's address; on the CDS Hooks
    // one, it answers its token only.
    if state.settings.metrics_listen.is_none()
        && !state
            .settings
            .metrics_token
            .as_ref()
            .is_some_and(|token| bearer_is(&headers, token.expose_secret()))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "/metrics needs the metrics token as a bearer token\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Whether `headers` carry `Authorization: Bearer <expected>`. The digests are compared, so
/// the time taken says nothing about how much of the token a guess got right.
fn bearer_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| Sha256::digest(given.trim()) == Sha256::digest(expected))
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    let (since_ok, failed) = {
        let runs = state.runs.lock().unwrap_or_else(|p| p.into_inner());
        (runs.since_ok, runs.last_failed.clone())
    };
    if let Some(reason) = failed
        && since_ok.elapsed() > state.settings.grace
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the last run failed and the grace period has passed: {}\n",
                reason.lines().next().unwrap_or_default()
            ),
        );
    }
    match state.server_answers().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Serves `app` on `listener` until `stop`, within `limits` (see the module docs); then lets
/// the connections finish their requests, and returns when the last has closed.
async fn serve_bounded(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let app = app.layer(middleware::from_fn_with_state(
        limits.request_timeout,
        deadline,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let mut until_stop = stop.clone();
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = until_stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // pausing lets others close rather than spinning on the error.
                warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed at once rather than left in the backlog, where it would still hold a slot.
            debug!(
                limit = limits.max_connections,
                "connection limit reached: connection closed"
            );
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| {
            tower_service::Service::call(&mut app.clone(), request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut until_stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = until_stop.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    // Every connection holds a permit until it closes: all of them back means all are done.
    let _ = permits.acquire_many(limits.max_connections as u32).await;
}

/// Answers 503 to a request that takes longer than `limit`, body and all.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!(
                "the request was not answered within {} s; try again later\n",
                limit.as_secs()
            ),
        )
            .into_response(),
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
            Some(jwt::Verifier::new(issuers.clone(), &settings.tls)?)
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
        evaluations: Arc::new(Semaphore::new(
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
        )),
        fhir: server_client(&settings)?,
        probe: tokio::sync::Mutex::new(None),
        plans: Mutex::new(None),
        thresholds: RwLock::new(thresholds),
        runs: Mutex::new(RunStatus {
            since_ok: Instant::now(),
            last_failed: None,
        }),
        settings,
    });
    state.plans()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = state.settings.limits;
    let mut app = cds_app(state.clone());
    let mut servers = Vec::new();
    match ops_listener {
        Some(ops) => {
            eprintln!(
                "segmentti serve: health and metrics on http://{}/",
                ops.local_addr()?
            );
            servers.push(tokio::spawn(serve_bounded(
                ops,
                ops_app(state.clone()),
                limits,
                stop_rx.clone(),
            )));
        }
        None => {
            if state.settings.metrics_token.is_none() {
                info!(
                    "/metrics is not served: set metrics_listen, or metrics_token_file for a token"
                );
            }
            app = app.merge(ops_app(state.clone()));
        }
    }
    eprintln!("segmentti serve: CDS Hooks on http://{bound}/cds-services");
    servers.push(tokio::spawn(serve_bounded(
        listener,
        app,
        limits,
        stop_rx.clone(),
    )));
    let scheduler = tokio::spawn(schedule(state.clone(), stop_rx.clone()));
    wait_for_signal().await;
    info!("stopping: no new calls or runs; a run under way finishes first");
    let _ = stop_tx.send(true);
    for server in servers {
        server.await.map_err(std::io::Error::other)?;
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

/// Runs on the schedules, one run at a time, until told to stop: a tick of `full_schedule` is
/// a full pass, a tick of `schedule` an incremental run (a full one while there is no
/// checkpoint). A full pass that fell due during another run is made as soon as it ends, and
/// one that failed is made again at the next incremental tick rather than a day later.
async fn schedule(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let (incremental, full) = (&state.settings.schedule, &state.settings.full_schedule);
    if incremental.is_none() && full.is_none() {
        return;
    }
    info!(
        schedule = incremental.as_ref().map_or("none", |(t, _)| t.as_str()),
        full_schedule = full.as_ref().map_or("none", |(t, _)| t.as_str()),
        "runs scheduled (UTC)"
    );
    let mut full_due = next_tick(full.as_ref(), chrono::Utc::now());
    loop {
        let now = chrono::Utc::now();
        let next_incremental = next_tick(incremental.as_ref(), now);
        let (at, is_full) = match (next_incremental, full_due) {
            (Some(i), Some(f)) if i < f => (i, false),
            (_, Some(f)) => (f, true),
            (Some(i), None) => (i, false),
            (None, None) => {
                warn!("the schedules have no next time; no more runs");
                return;
            }
        };
        let wait = (at - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Awaited to the end even when a stop arrives meanwhile: see the module docs.
        let succeeded = run_once(&state, is_full).await;
        if is_full {
            let now = chrono::Utc::now();
            full_due = if succeeded {
                next_tick(full.as_ref(), now)
            } else {
                next_tick(incremental.as_ref(), now).or(next_tick(full.as_ref(), now))
            };
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// The first tick of `schedule` after `after`.
fn next_tick(
    schedule: Option<&(String, croner::Cron)>,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    schedule.and_then(|(_, cron)| cron.find_next_occurrence(&after, false).ok())
}

/// One run, with its own correlation id, off the async workers; `full`: a full pass. Returns
/// whether it succeeded.
async fn run_once(state: &Arc<AppState>, full: bool) -> bool {
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
            full,
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
                keep_thresholds(&mut t, report.models.iter().map(|(s, _)| s));
            }
            let refused = report.refused();
            if refused > 0 {
                // The checkpoint stays where it was, so the next run tries these clients again.
                error!(refused, "the server refused some clients' results");
            }
            info!(
                full = report.since.is_none(),
                read = report.read,
                elapsed_ms = started.elapsed().as_millis() as u64,
                checkpoint = report.checkpoint_saved,
                "run done"
            );
            runs.since_ok = Instant::now();
            runs.last_failed = None;
        }
        Err(e) => {
            error!(error = %e, "run failed");
            runs.last_failed = Some(e.to_string());
        }
    }
    state
        .metrics
        .run_ended(started.elapsed(), result.as_ref().ok(), unix);
    result.is_ok()
}
