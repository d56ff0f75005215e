//! The HTTP service (`genesis-billing serve`): admin API, Stripe webhooks, health, metrics.

mod admin;
pub mod error;
mod events;
mod manage;
mod ops;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::billing::BillingService;
use crate::config::ServeSettings;
use crate::jobs::Checks;
use crate::jobs::Schedule;
use crate::outbound::OutboundSettings;
use crate::owners::Owners;
use crate::webhook::Inbox;
use error::{ApiError, REQUEST_ID};
use server::{Gate, Limits};

/// Largest admin request body; business records are small.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

/// Shared state of every handler.
pub struct AppState {
    pub service: Arc<BillingService>,
    pub inbox: Arc<Inbox>,
    /// SHA-256 of each admin token: compared in constant time, and the tokens themselves are not kept.
    admin_token_digests: Vec<[u8; 32]>,
    pub stripe_mode: &'static str,
    pub key_is_test: bool,
    /// The catalog and Stripe as the last background checks found them (fixed codes, see `jobs`).
    pub checks: Arc<Checks>,
    /// The database probe in progress or last finished (one at a time, whatever the request rate).
    db_probe: ops::DbProbe,
    /// Connection limits of every listener.
    pub limits: Limits,
    /// Separate in-flight budgets: a flood of one class leaves the others answering.
    gates: Gates,
    /// SHA-256 of the token `/health` and `/metrics` require, when one is configured.
    metrics_token_digest: Option<[u8; 32]>,
    /// Where `/health` and `/metrics` are served when not on the main listener.
    pub ops_listen: Option<SocketAddr>,
    /// Owners' manage links and the Billing Portal behind them.
    pub owners: Arc<Owners>,
    /// Event delivery to the meta-agent (`serve` starts its worker; `/health` and `/metrics` report it).
    pub outbound: Arc<OutboundSettings>,
    /// Owner notices by email, planned and sent by a background job when set.
    pub notices: Option<Arc<crate::owners::notice::Notices>>,
}

struct Gates {
    webhook: Gate,
    admin: Gate,
    ops: Gate,
    /// Owners opening manage links (public: its own budget, so it cannot starve the admin API).
    manage: Gate,
}

impl Gates {
    fn of(s: &ServeSettings) -> Self {
        Self {
            webhook: Gate::new("webhook", s.max_in_flight_webhook),
            admin: Gate::new("admin", s.max_in_flight_admin),
            ops: Gate::new("ops", s.max_in_flight_ops),
            manage: Gate::new("manage", s.max_in_flight_admin),
        }
    }
}

/// Constant-time comparison of a presented token's digest with the known digests.
fn digest_matches(known: &[[u8; 32]], presented: &str) -> bool {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut ok = 0u8;
    for k in known {
        let diff = k.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        ok |= u8::from(diff == 0);
    }
    ok == 1
}

impl AppState {
    pub fn new(
        service: Arc<BillingService>,
        inbox: Arc<Inbox>,
        admin_tokens: &[SecretString],
        stripe_mode: &'static str,
        key_is_test: bool,
    ) -> Self {
        Self {
            service,
            inbox,
            admin_token_digests: admin_tokens
                .iter()
                .map(|t| Sha256::digest(t.expose_secret().as_bytes()).into())
                .collect(),
            stripe_mode,
            key_is_test,
            checks: Arc::new(Checks::default()),
            db_probe: ops::DbProbe::default(),
            limits: Limits::default(),
            gates: Gates::of(&ServeSettings::default()),
            metrics_token_digest: None,
            ops_listen: None,
            owners: Arc::new(Owners::disabled()),
            outbound: Arc::new(OutboundSettings::default()),
            notices: None,
        }
    }

    /// Owner notices (planned from the outbox and sent by `serve`).
    pub fn with_notices(mut self, notices: Option<Arc<crate::owners::notice::Notices>>) -> Self {
        self.notices = notices;
        self
    }

    /// Manage links and the portal, from the settings.
    pub fn with_owners(mut self, owners: Arc<Owners>) -> Self {
        self.owners = owners;
        self
    }

    /// Applies the event delivery settings.
    pub fn with_outbound(mut self, s: &OutboundSettings) -> Self {
        self.outbound = Arc::new(s.clone());
        self
    }

    /// Applies `serve`'s limits, ops listener and metrics token.
    pub fn with_serve_settings(mut self, s: &ServeSettings) -> Self {
        self.limits = Limits {
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(s.body_read_timeout_secs),
            max_connections: s.max_connections,
            shutdown_grace: Duration::from_secs(s.shutdown_grace_secs),
        };
        self.gates = Gates::of(s);
        self.metrics_token_digest = s
            .metrics_token
            .as_ref()
            .map(|t| Sha256::digest(t.expose_secret().as_bytes()).into());
        self.ops_listen = s.ops_listen;
        self
    }

    /// Whether `presented` equals a configured token. Digests have equal length, and the comparison
    /// visits every byte of every token, so timing reveals nothing.
    fn admin_token_ok(&self, presented: &str) -> bool {
        digest_matches(&self.admin_token_digests, presented)
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Everything (no separate ops listener).
    All,
    /// The admin API, webhooks and the OpenAPI document.
    Public,
    /// `/health` and `/metrics`.
    Ops,
}

/// The full router: every route on one listener.
pub fn router(state: Arc<AppState>) -> Router {
    router_for(state, Role::All)
}

fn router_for(state: Arc<AppState>, role: Role) -> Router {
    let admin = Router::new()
        .route("/v1/businesses", post(admin::create).get(admin::list))
        .route(
            "/v1/businesses/{id}",
            get(admin::show).delete(admin::takedown),
        )
        .route("/v1/businesses/{id}/checkout", post(admin::checkout))
        .route("/v1/businesses/{id}/manage-link", post(manage::create_link))
        .route("/v1/revenue", get(admin::revenue))
        .route("/v1/events", get(events::list))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_gate))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT));
    let ops = Router::new()
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), ops_gate))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_metrics_token,
        ));
    let public = Router::new()
        // A static document: no budget, so a flood of it on a public listener cannot take the ops
        // budget that `/health` needs on the internal one.
        .route("/openapi.json", get(ops::openapi))
        // The webhook handler enforces its own 1 MiB limit so an oversized body is counted as `too_large`.
        .route(
            "/stripe/webhook",
            post(ops::webhook)
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    ops::webhook_gate,
                ))
                .layer(DefaultBodyLimit::disable()),
        );
    // Owners' pages: no bearer token (a manage link's signed token is its credential).
    let owner_pages = Router::new()
        .route("/billing/manage", get(manage::open))
        .route("/billing/manage/done", get(manage::done))
        .route_layer(middleware::from_fn_with_state(state.clone(), manage_gate));
    let public = public.merge(owner_pages);
    let routes = match role {
        Role::All => admin.merge(public).merge(ops),
        Role::Public => admin.merge(public),
        Role::Ops => ops,
    };
    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// Gives every request an id (the caller's `X-Request-Id` if sane), logs it once, and echoes the id.
async fn request_context(request: Request, next: Next) -> Response {
    let incoming = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned);
    let id = incoming.unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()));
    let method = request.method().clone();
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span.clone()),
        )
        .await;
    let status = response.status();
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "served"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// 503 with `Retry-After` when a class is at its in-flight limit.
fn overloaded() -> Response {
    error_with_header(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many requests in progress; try again shortly",
        ("retry-after", "1"),
    )
}

/// An API error response with one extra header.
fn error_with_header(
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    (name, value): (&'static str, &'static str),
) -> Response {
    let mut r = ApiError::new(status, code, message).into_response();
    r.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    r
}

async fn admin_gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match state.gates.admin.try_enter() {
        Some(_slot) => next.run(request).await,
        None => overloaded(),
    }
}

async fn manage_gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match state.gates.manage.try_enter() {
        Some(_slot) => next.run(request).await,
        None => overloaded(),
    }
}

async fn ops_gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match state.gates.ops.try_enter() {
        Some(_slot) => next.run(request).await,
        None => overloaded(),
    }
}

/// The token of an `Authorization: Bearer` header, if the request has one.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// 401 with the `WWW-Authenticate` challenge.
fn unauthorized() -> Response {
    error_with_header(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
        ("www-authenticate", "Bearer"),
    )
}

/// `/health` and `/metrics` behind `GENESIS_BILLING_METRICS_TOKEN`, when it is set.
async fn require_metrics_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(known) = &state.metrics_token_digest else {
        return next.run(request).await;
    };
    let presented = bearer(&request);
    match presented {
        Some(token) if digest_matches(std::slice::from_ref(known), token) => {
            next.run(request).await
        }
        _ => unauthorized(),
    }
}

async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.admin_token_digests.is_empty() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_api_disabled",
            "the admin API is disabled: no GENESIS_ADMIN_TOKEN is configured",
        )
        .into_response();
    }
    let presented = bearer(&request);
    match presented {
        Some(token) if state.admin_token_ok(token) => next.run(request).await,
        _ => unauthorized(),
    }
}

/// A running service; dropping it does not stop it, `shutdown` does.
pub struct Running {
    pub addr: SocketAddr,
    /// The ops listener (`/health`, `/metrics`), when separate.
    pub ops_addr: Option<SocketAddr>,
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (within the grace period), and stops the
    /// background loops.
    pub async fn shutdown(self) -> std::io::Result<()> {
        tracing::info!("shutting down: finishing in-flight requests");
        self.shutdown.send_replace(true);
        for task in self.background {
            task.abort();
        }
        self.server.await.unwrap_or(Ok(()))
    }

    /// Resolves when the server stops by itself (e.g. on a signal).
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.server.await.unwrap_or(Ok(()));
        for task in self.background {
            task.abort();
        }
        result
    }
}

/// Binds `addr` (and the state's ops address, if any), resumes unfinished work, starts the background
/// loops and serves until shutdown.
pub async fn start(
    state: Arc<AppState>,
    addr: SocketAddr,
    schedule: Schedule,
    stop_on_signal: bool,
) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let ops = match state.ops_listen {
        Some(ops) => Some(tokio::net::TcpListener::bind(ops).await?),
        None => None,
    };
    start_listeners(state, listener, ops, schedule, stop_on_signal)
}

/// As `start`, on a listener the caller bound (tests learn the address before building the state).
pub fn start_on(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    schedule: Schedule,
    stop_on_signal: bool,
) -> std::io::Result<Running> {
    start_listeners(state, listener, None, schedule, stop_on_signal)
}

/// As `start_on`, with `/health` and `/metrics` on `ops` instead of `listener` when given.
pub fn start_listeners(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    ops: Option<tokio::net::TcpListener>,
    schedule: Schedule,
    stop_on_signal: bool,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let ops_addr = ops.as_ref().map(|l| l.local_addr()).transpose()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let tx = Arc::new(tx);
    let limits = state.limits.clone();
    let mut background = Vec::new();
    let outbound_stop = rx.clone();
    if stop_on_signal {
        let tx = tx.clone();
        background.push(tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
            tx.send_replace(true);
        }));
    }
    let server = match ops {
        None => tokio::spawn(server::run(listener, router(state.clone()), limits, rx)),
        Some(ops) => {
            let main = server::run(
                listener,
                router_for(state.clone(), Role::Public),
                limits.clone(),
                rx.clone(),
            );
            let ops = server::run(ops, router_for(state.clone(), Role::Ops), limits, rx);
            tokio::spawn(async move {
                let (a, b) = tokio::join!(main, ops);
                a.and(b)
            })
        }
    };
    background.extend(crate::jobs::spawn(
        state.service.clone(),
        state.inbox.clone(),
        state.checks.clone(),
        schedule,
    ));
    background.push(crate::jobs::spawn_portal_check(
        state.service.clone(),
        state.owners.clone(),
        state.checks.clone(),
    ));
    background.extend(crate::jobs::spawn_outbound(
        state.service.clone(),
        state.outbound.clone(),
        outbound_stop,
    ));
    if let Some(notices) = &state.notices {
        background.push(crate::jobs::spawn_notices(
            state.service.clone(),
            notices.clone(),
        ));
    }
    Ok(Running {
        addr,
        ops_addr,
        shutdown: tx,
        server,
        background,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
