//! Settings from flags, a TOML config file and the environment (SPEC §4), validated once at start-up.
//!
//! Precedence for every setting, secrets included: command-line flag, then environment, then config file,
//! then default; `resolve` is the one place that order is written. Secrets are wrapped in `SecretString` the moment they are read and never appear in an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::outbound::{DashboardUrl, OutboundSettings};
use crate::store::{DatabaseUrl, StoreOptions};
use crate::stripe::RetryPolicy;

/// A configuration problem; start-up stops with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name} is not a Stripe secret key: expected a value starting with sk_test_, rk_test_, sk_live_ or rk_live_")]
    InvalidStripeKey { source_name: String },
    #[error("set either {0} or {0}_FILE, not both")]
    BothValueAndFile(String),
    #[error("cannot read {var} file {path}: {reason}")]
    SecretFile {
        var: String,
        path: String,
        reason: String,
    },
    #[error("{var} is empty")]
    Empty { var: String },
    #[error("{source_name}: {problem}")]
    WeakSecret {
        source_name: String,
        problem: String,
    },
    #[error("invalid {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("a live Stripe key is only ever sent over HTTPS, but the Stripe API base is {0}")]
    LiveKeyOverHttp(String),
    #[error("ENABLE_PAYMENTS is true but no Stripe key is configured (STRIPE_API_KEY, STRIPE_SECRET_KEY or STRIPE_TEST_KEY)")]
    PaymentsWithoutKey,
}

fn invalid(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Test or live mode, decided by the key's prefix only (SPEC §8 defect 1: never by a substring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripeMode {
    Test,
    Live,
}

impl StripeMode {
    /// The mode of a key, or `None` for anything that is not a Stripe secret or restricted key.
    pub fn of_key(key: &str) -> Option<Self> {
        let valid_tail = |rest: &str| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        for (prefix, mode) in [
            ("sk_test_", Self::Test),
            ("rk_test_", Self::Test),
            ("sk_live_", Self::Live),
            ("rk_live_", Self::Live),
        ] {
            if let Some(rest) = key.strip_prefix(prefix) {
                return (valid_tail(rest) && key.len() <= 255).then_some(mode);
            }
        }
        None
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Live => "live",
        }
    }
}

/// How to reach Stripe, present only when payments are enabled.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub key: SecretString,
    pub mode: StripeMode,
    pub api_base: String,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub rate_limit_per_second: u32,
}

/// Every validated setting.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    /// `None` when payments are disabled (no key, or `ENABLE_PAYMENTS=false`).
    pub stripe: Option<StripeSettings>,
    /// Mode of the configured key even when payments are switched off (reported by `/health`).
    pub key_mode: Option<StripeMode>,
    pub rollout_percent: u8,
    pub catalog_path: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin_tokens: Vec<SecretString>,
    pub webhook_secrets: Vec<SecretString>,
    /// Base URL for Checkout success and cancel pages.
    pub public_url: String,
    /// How far a webhook signature's timestamp may be from now, either way.
    pub webhook_tolerance_secs: i64,
    /// How often `serve` retries unfinished provisioning and takedowns.
    pub resume_interval_secs: u64,
    /// How often `serve` reads Stripe's event list for events webhooks missed (0 = never).
    pub gap_fill_interval_secs: u64,
    /// How long a worker holds a business it works on; a crashed worker's claim expires after this.
    pub lease_secs: u64,
    /// How often `serve` reconciles with Stripe and repairs drift (0 = never).
    pub reconcile_interval_secs: u64,
    /// Most database connections this process opens (each replica has its own pool).
    pub db_max_connections: u32,
    /// PostgreSQL `statement_timeout` per connection, in milliseconds (0 = the server's default).
    pub db_statement_timeout_ms: u64,
    /// How `serve` bounds slow and hostile clients.
    pub serve: ServeSettings,
    /// Problems that do not stop start-up (unknown `GENESIS_BILLING_*` variables), for the caller to log.
    pub warnings: Vec<String>,
    /// Manage links and the Billing Portal owners reach through them.
    pub owners: OwnerSettings,
    /// Pushing events to the meta-agent (`GENESIS_DASHBOARD_*`) and how long events are kept.
    pub outbound: OutboundSettings,
    /// Notices to owners by email, and what an `unpaid` subscription does to its business.
    pub notices: NoticeSettings,
}

/// Manage links (`GET /billing/manage?token=…`) and the Billing Portal configuration behind them.
#[derive(Debug, Clone)]
pub struct OwnerSettings {
    /// `GENESIS_BILLING_LINK_SECRET`: the first signs, any verifies; empty means no links.
    pub link_secrets: Vec<SecretString>,
    /// How long a new link works.
    pub link_ttl_secs: u64,
    /// Whether owners may cancel in the portal.
    pub portal_allow_cancel: bool,
    /// Whether `GENESIS_BILLING_PUBLIC_URL` was given (links are never made on the placeholder default).
    pub public_url_set: bool,
}

/// Default lifetime of a manage link: 7 days.
pub const DEFAULT_LINK_TTL_SECS: u64 = 7 * 86_400;

/// Shortest link secret accepted: it is all that stands between a guessed link and an owner's portal.
pub const MIN_LINK_SECRET_LEN: usize = 16;

/// Limits of `serve`'s listeners; a client that breaks them is cut off, and other clients keep being served.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// A connection must deliver a request's complete header within this (also the idle keep-alive limit).
    pub header_read_timeout_secs: u64,
    /// A request's whole body must arrive within this after its header.
    pub body_read_timeout_secs: u64,
    /// Open connections per listener; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Webhook requests handled at once; beyond it, 503 at once.
    pub max_in_flight_webhook: usize,
    /// Admin API requests handled at once; beyond it, 503 at once.
    pub max_in_flight_admin: usize,
    /// `/health` and `/metrics` requests handled at once; beyond it, 503 at once.
    pub max_in_flight_ops: usize,
    /// After SIGTERM, how long requests in flight may take before their connections are closed.
    pub shutdown_grace_secs: u64,
    /// A separate address for `/health` and `/metrics` (then not served on `listen`).
    pub ops_listen: Option<SocketAddr>,
    /// Bearer token `/health` and `/metrics` require, when set.
    pub metrics_token: Option<SecretString>,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_connections: 512,
            max_in_flight_webhook: 128,
            max_in_flight_admin: 64,
            max_in_flight_ops: 16,
            shutdown_grace_secs: 25,
            ops_listen: None,
            metrics_token: None,
        }
    }
}

/// Settings given as command-line flags (all optional).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config_file: Option<PathBuf>,
    pub stripe_key: Option<SecretString>,
    pub stripe_api_base: Option<String>,
    pub database_url: Option<String>,
    pub catalog: Option<PathBuf>,
    pub listen: Option<String>,
}

/// The TOML config file. Unknown keys are rejected so a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    stripe_key: Option<String>,
    stripe_api_base: Option<String>,
    database_url: Option<String>,
    enable_payments: Option<bool>,
    billing_rollout_percent: Option<u8>,
    catalog: Option<PathBuf>,
    listen: Option<String>,
    admin_tokens: Option<Vec<String>>,
    webhook_secrets: Option<Vec<String>>,
    public_url: Option<String>,
    stripe_timeout_secs: Option<u64>,
    stripe_max_attempts: Option<u32>,
    stripe_retry_base_ms: Option<u64>,
    stripe_rate_limit: Option<u32>,
    webhook_tolerance_secs: Option<i64>,
    resume_interval_secs: Option<u64>,
    gap_fill_interval_secs: Option<u64>,
    reconcile_interval_secs: Option<u64>,
    lease_secs: Option<u64>,
    db_max_connections: Option<u32>,
    db_statement_timeout_ms: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    body_read_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_in_flight_webhook: Option<usize>,
    max_in_flight_admin: Option<usize>,
    max_in_flight_ops: Option<usize>,
    shutdown_grace_secs: Option<u64>,
    ops_listen: Option<String>,
    metrics_token: Option<String>,
    link_secrets: Option<Vec<String>>,
    link_ttl_secs: Option<u64>,
    portal_allow_cancel: Option<bool>,
    // Events to the meta-agent (issue 13).
    dashboard_url: Option<String>,
    dashboard_allow_http: Option<bool>,
    dashboard_secrets: Option<Vec<String>>,
    dashboard_timeout_secs: Option<u64>,
    dashboard_backoff_cap_secs: Option<u64>,
    dashboard_give_up_secs: Option<u64>,
    dashboard_concurrency: Option<usize>,
    event_retention_days: Option<u64>,
    smtp_url: Option<String>,
    notice_from: Option<String>,
    notice_templates: Option<PathBuf>,
    notice_disable: Option<Vec<String>>,
    notice_retry_window_secs: Option<u64>,
    notice_retry_base_ms: Option<u64>,
    notice_payment_failed_hold_ms: Option<u64>,
    billing_unpaid_policy: Option<String>,
}

/// Where environment variables come from; tests pass a list instead of touching the process environment.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
    /// The names of every variable set (never their values), to find misspelt settings.
    fn vars(&self) -> Vec<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
    fn vars(&self) -> Vec<String> {
        self.iter().map(|(k, _)| k.to_string()).collect()
    }
}

/// An environment built at run time (tests, the demo).
impl Env for Vec<(String, String)> {
    fn var(&self, name: &str) -> Option<String> {
        self.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
    fn vars(&self) -> Vec<String> {
        self.iter().map(|(k, _)| k.clone()).collect()
    }
}

/// Every `GENESIS_BILLING_*` variable the service or its scripts read; any other is reported as unknown.
pub const KNOWN_GENESIS_BILLING_VARS: &[&str] = &[
    "GENESIS_BILLING_CONFIG",
    "GENESIS_BILLING_CATALOG",
    "GENESIS_BILLING_LISTEN",
    "GENESIS_BILLING_PUBLIC_URL",
    "GENESIS_BILLING_STRIPE_TIMEOUT_SECS",
    "GENESIS_BILLING_STRIPE_MAX_ATTEMPTS",
    "GENESIS_BILLING_STRIPE_RETRY_BASE_MS",
    "GENESIS_BILLING_STRIPE_RATE_LIMIT",
    "GENESIS_BILLING_WEBHOOK_TOLERANCE_SECS",
    "GENESIS_BILLING_RESUME_INTERVAL_SECS",
    "GENESIS_BILLING_GAP_FILL_INTERVAL_SECS",
    "GENESIS_BILLING_RECONCILE_INTERVAL_SECS",
    "GENESIS_BILLING_LEASE_SECS",
    "GENESIS_BILLING_DB_MAX_CONNECTIONS",
    "GENESIS_BILLING_DB_STATEMENT_TIMEOUT_MS",
    "GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS",
    "GENESIS_BILLING_BODY_READ_TIMEOUT_SECS",
    "GENESIS_BILLING_MAX_CONNECTIONS",
    "GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK",
    "GENESIS_BILLING_MAX_IN_FLIGHT_ADMIN",
    "GENESIS_BILLING_MAX_IN_FLIGHT_OPS",
    "GENESIS_BILLING_SHUTDOWN_GRACE_SECS",
    "GENESIS_BILLING_OPS_LISTEN",
    "GENESIS_BILLING_METRICS_TOKEN",
    "GENESIS_BILLING_METRICS_TOKEN_FILE",
    "GENESIS_BILLING_LINK_SECRET",
    "GENESIS_BILLING_LINK_SECRET_FILE",
    "GENESIS_BILLING_LINK_TTL_SECS",
    "GENESIS_BILLING_PORTAL_ALLOW_CANCEL",
    "GENESIS_BILLING_UNPAID_POLICY",
    // Read by scripts/bench to find the binary, so it is in the service's environment there.
    "GENESIS_BILLING_BIN",
];

/// One warning per `GENESIS_BILLING_*` or `GENESIS_DASHBOARD_*` variable nothing reads, naming it (never
/// its value).
fn unknown_variables(env: &dyn Env) -> Vec<String> {
    let mut names: Vec<String> = env
        .vars()
        .into_iter()
        .filter(|n| n.starts_with("GENESIS_BILLING_") || n.starts_with("GENESIS_DASHBOARD_"))
        .filter(|n| !KNOWN_GENESIS_BILLING_VARS.contains(&n.as_str()))
        .filter(|n| !KNOWN_OUTBOUND_VARS.contains(&n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| format!("unknown environment variable {n} is ignored (misspelt setting?)"))
        .collect()
}

/// The one precedence every setting follows: flag, then environment, then config file; the caller
/// applies the default. The environment is only read when no flag is given.
fn resolve<T>(
    flag: Option<T>,
    env: impl FnOnce() -> Result<Option<T>, ConfigError>,
    file: Option<T>,
) -> Result<Option<T>, ConfigError> {
    match flag {
        Some(v) => Ok(Some(v)),
        None => Ok(env()?.or(file)),
    }
}

/// A value given as an environment variable, parsed with an error that names the variable.
trait FromEnv: Sized {
    fn from_env(name: &str, v: &str) -> Result<Self, ConfigError>;
}

macro_rules! from_env_num {
    ($($t:ty),*) => {$(
        impl FromEnv for $t {
            fn from_env(name: &str, v: &str) -> Result<Self, ConfigError> {
                parse_num(name, v)
            }
        }
    )*};
}
from_env_num!(u8, u32, u64, i64, usize);

impl FromEnv for bool {
    fn from_env(name: &str, v: &str) -> Result<Self, ConfigError> {
        parse_bool(name, v)
    }
}

impl FromEnv for String {
    fn from_env(_: &str, v: &str) -> Result<Self, ConfigError> {
        Ok(v.to_owned())
    }
}

impl FromEnv for PathBuf {
    fn from_env(_: &str, v: &str) -> Result<Self, ConfigError> {
        Ok(PathBuf::from(v))
    }
}

/// A plain setting: its flag, else variable `name`, else the config file's value.
fn setting<T: FromEnv>(
    env: &dyn Env,
    flag: Option<T>,
    name: &str,
    file: Option<T>,
) -> Result<Option<T>, ConfigError> {
    resolve(
        flag,
        || env.var(name).map(|v| T::from_env(name, &v)).transpose(),
        file,
    )
}

/// A number without a flag: variable `name`, else the config file, else `default`; within `range`.
fn bounded<T: FromEnv + PartialOrd + std::fmt::Display + Copy>(
    env: &dyn Env,
    name: &str,
    file: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let v = setting(env, None, name, file)?.unwrap_or(default);
    if !range.contains(&v) {
        return Err(invalid(
            name,
            format!("expected {} to {}", range.start(), range.end()),
        ));
    }
    Ok(v)
}

/// Reads `NAME` or the file named by `NAME_FILE`, wrapped as a secret at once, with the variable it came from.
fn secret_var(env: &dyn Env, name: &str) -> Result<Option<(SecretString, String)>, ConfigError> {
    let file_var = format!("{name}_FILE");
    match (env.var(name), env.var(&file_var)) {
        (Some(_), Some(_)) => Err(ConfigError::BothValueAndFile(name.to_owned())),
        (Some(v), None) => {
            let v = SecretString::from(v);
            if v.expose_secret().trim().is_empty() {
                return Err(ConfigError::Empty {
                    var: name.to_owned(),
                });
            }
            Ok(Some((v, name.to_owned())))
        }
        (None, Some(path)) => {
            let content = std::fs::read_to_string(&path).map_err(|e| ConfigError::SecretFile {
                var: file_var.clone(),
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let v = SecretString::from(content.trim().to_owned());
            drop(content);
            if v.expose_secret().is_empty() {
                return Err(ConfigError::Empty { var: file_var });
            }
            Ok(Some((v, file_var)))
        }
        (None, None) => Ok(None),
    }
}

/// Shortest webhook signing secret accepted (Stripe's are `whsec_` and 32 more characters).
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// Shortest admin token accepted: a guessable token would open the admin API.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Splits a comma-separated secret list without ever copying it into a plain `String` that outlives us.
fn split_secrets(v: &SecretString) -> Vec<SecretString> {
    v.expose_secret()
        .split(',')
        .map(|s| SecretString::from(s.to_owned()))
        .collect()
}

/// The one check every webhook secret and admin token passes, whatever its source: trimmed, then
/// non-empty, without whitespace or control characters, and at least `min` characters. The error names
/// the source and the entry's position, never its text.
fn check_secrets(
    secrets: Vec<SecretString>,
    source_name: &str,
    what: &str,
    min: usize,
) -> Result<Vec<SecretString>, ConfigError> {
    let weak = |n: usize, problem: String| ConfigError::WeakSecret {
        source_name: source_name.to_owned(),
        problem: format!("{what} {n} {problem}"),
    };
    secrets
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let v = s.expose_secret().trim();
            if v.is_empty() {
                return Err(weak(i + 1, "is empty".to_owned()));
            }
            if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(weak(
                    i + 1,
                    "contains whitespace or control characters".to_owned(),
                ));
            }
            if v.chars().count() < min {
                return Err(weak(i + 1, format!("is shorter than {min} characters")));
            }
            Ok(SecretString::from(v.to_owned()))
        })
        .collect()
}

/// A secret list from `var` (or `var_FILE`), else the config file key `file_key`, checked.
fn secret_list(
    env: &dyn Env,
    var: &str,
    file_value: Option<Vec<String>>,
    file_key: &str,
    what: &str,
    min: usize,
) -> Result<Vec<SecretString>, ConfigError> {
    let from_file = file_value.map(|list| {
        let list: Vec<SecretString> = list.into_iter().map(SecretString::from).collect();
        (list, format!("{file_key} in the config file"))
    });
    let from_env = || Ok(secret_var(env, var)?.map(|(v, source)| (split_secrets(&v), source)));
    match resolve(None, from_env, from_file)? {
        Some((list, source)) => check_secrets(list, &source, what, min),
        None => Ok(Vec::new()),
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, "expected true or false")),
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| invalid(name, format!("expected a number, got {v:?}")))
}

impl Settings {
    /// Builds settings from flags, `env` and the config file (flag `--config` or `GENESIS_BILLING_CONFIG`),
    /// in that order of precedence, then defaults.
    pub fn load(flags: &Flags, env: &dyn Env) -> Result<Self, ConfigError> {
        let file_path = flags
            .config_file
            .clone()
            .or_else(|| env.var("GENESIS_BILLING_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            Some(p) => read_file_config(p)?,
            None => FileConfig::default(),
        };
        let serve = serve_settings(&file, env)?;
        let outbound = outbound_settings(&file, env)?;

        // The key: flag, the three variables in order (first one set wins), then the config file.
        let key = resolve(
            flags
                .stripe_key
                .clone()
                .map(|k| (k, "--stripe-key".to_owned())),
            || {
                for name in ["STRIPE_API_KEY", "STRIPE_SECRET_KEY", "STRIPE_TEST_KEY"] {
                    if let Some(found) = secret_var(env, name)? {
                        return Ok(Some(found));
                    }
                }
                Ok(None)
            },
            file.stripe_key.clone().map(|k| {
                (
                    SecretString::from(k),
                    "stripe_key in the config file".to_owned(),
                )
            }),
        )?;
        let (key, key_mode) = match key {
            Some((k, source)) => {
                let k = SecretString::from(k.expose_secret().trim().to_owned());
                let mode =
                    StripeMode::of_key(k.expose_secret()).ok_or(ConfigError::InvalidStripeKey {
                        source_name: source,
                    })?;
                (Some(k), Some(mode))
            }
            None => (None, None),
        };

        let enable_payments = setting(env, None, "ENABLE_PAYMENTS", file.enable_payments)?;
        let payments_on = match (enable_payments, &key) {
            (Some(true), None) => return Err(ConfigError::PaymentsWithoutKey),
            (Some(false), _) | (None, None) => false,
            (_, Some(_)) => true,
        };

        let api_base = setting(
            env,
            flags.stripe_api_base.clone(),
            "STRIPE_API_BASE",
            file.stripe_api_base.clone(),
        )?
        .unwrap_or_else(|| "https://api.stripe.com".to_owned());
        let api_base = api_base.trim().trim_end_matches('/').to_owned();
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            return Err(invalid(
                "STRIPE_API_BASE",
                "expected an http:// or https:// URL",
            ));
        }
        if key_mode == Some(StripeMode::Live) && !api_base.starts_with("https://") {
            return Err(ConfigError::LiveKeyOverHttp(api_base));
        }

        let timeout_secs = bounded(
            env,
            "GENESIS_BILLING_STRIPE_TIMEOUT_SECS",
            file.stripe_timeout_secs,
            20,
            1..=300,
        )?;
        let max_attempts = bounded(
            env,
            "GENESIS_BILLING_STRIPE_MAX_ATTEMPTS",
            file.stripe_max_attempts,
            3,
            1..=10,
        )?;
        let retry_base_ms = unbounded(
            env,
            "GENESIS_BILLING_STRIPE_RETRY_BASE_MS",
            file.stripe_retry_base_ms,
            1000,
        )?;
        let default_rate = match key_mode {
            Some(StripeMode::Live) => 90,
            _ => 25,
        };
        let rate_limit = unbounded(
            env,
            "GENESIS_BILLING_STRIPE_RATE_LIMIT",
            file.stripe_rate_limit,
            default_rate,
        )?;

        let stripe = match (payments_on, key, key_mode) {
            (true, Some(key), Some(mode)) => Some(StripeSettings {
                key,
                mode,
                api_base,
                timeout: Duration::from_secs(timeout_secs),
                retry: RetryPolicy {
                    max_attempts,
                    base_delay: Duration::from_millis(retry_base_ms),
                    ..RetryPolicy::default()
                },
                rate_limit_per_second: rate_limit,
            }),
            _ => None,
        };

        let rollout_percent = bounded(
            env,
            "BILLING_ROLLOUT_PERCENT",
            file.billing_rollout_percent,
            100,
            0..=100,
        )?;

        let database_url = setting(
            env,
            flags.database_url.clone(),
            "DATABASE_URL",
            file.database_url,
        )?
        .unwrap_or_else(|| "sqlite://genesis-billing.db".to_owned());
        let database_url = DatabaseUrl::new(database_url);
        if !(database_url.expose().starts_with("sqlite:") || database_url.is_postgres()) {
            return Err(invalid(
                "DATABASE_URL",
                "expected sqlite://PATH or postgres://…",
            ));
        }

        let listen = setting(
            env,
            flags.listen.clone(),
            "GENESIS_BILLING_LISTEN",
            file.listen,
        )?
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen
            .parse()
            .map_err(|_| invalid("GENESIS_BILLING_LISTEN", "expected HOST:PORT"))?;

        let admin_tokens = secret_list(
            env,
            "GENESIS_ADMIN_TOKEN",
            file.admin_tokens,
            "admin_tokens",
            "admin token",
            MIN_ADMIN_TOKEN_LEN,
        )?;
        let webhook_secrets = secret_list(
            env,
            "STRIPE_WEBHOOK_SECRET",
            file.webhook_secrets,
            "webhook_secrets",
            "webhook secret",
            MIN_WEBHOOK_SECRET_LEN,
        )?;

        let db_max_connections = bounded(
            env,
            "GENESIS_BILLING_DB_MAX_CONNECTIONS",
            file.db_max_connections,
            16,
            1..=1000,
        )?;
        let db_statement_timeout_ms = unbounded(
            env,
            "GENESIS_BILLING_DB_STATEMENT_TIMEOUT_MS",
            file.db_statement_timeout_ms,
            30_000,
        )?;
        let owners = OwnerSettings {
            link_secrets: secret_list(
                env,
                "GENESIS_BILLING_LINK_SECRET",
                file.link_secrets,
                "link_secrets",
                "link secret",
                MIN_LINK_SECRET_LEN,
            )?,
            // At most 90 days: a link in an old email should not open the portal forever.
            link_ttl_secs: bounded(
                env,
                "GENESIS_BILLING_LINK_TTL_SECS",
                file.link_ttl_secs,
                DEFAULT_LINK_TTL_SECS,
                1..=90 * 86_400,
            )?,
            portal_allow_cancel: setting(
                env,
                None,
                "GENESIS_BILLING_PORTAL_ALLOW_CANCEL",
                file.portal_allow_cancel,
            )?
            .unwrap_or(false),
            public_url_set: false,
        };
        let public_url = setting(env, None, "GENESIS_BILLING_PUBLIC_URL", file.public_url)?;
        let owners = OwnerSettings {
            public_url_set: public_url.is_some(),
            ..owners
        };

        let notices = notice_settings(
            NoticeFile {
                smtp_url: file.smtp_url,
                from: file.notice_from,
                templates: file.notice_templates,
                disable: file.notice_disable,
                retry_window_secs: file.notice_retry_window_secs,
                retry_base_ms: file.notice_retry_base_ms,
                payment_failed_hold_ms: file.notice_payment_failed_hold_ms,
                unpaid_policy: file.billing_unpaid_policy,
            },
            env,
            &owners,
        )?;

        if serve.ops_listen == Some(listen) && listen.port() != 0 {
            return Err(invalid(
                "GENESIS_BILLING_OPS_LISTEN",
                "must differ from GENESIS_BILLING_LISTEN",
            ));
        }

        Ok(Self {
            database_url,
            db_max_connections,
            db_statement_timeout_ms,
            serve,
            stripe,
            key_mode,
            rollout_percent,
            catalog_path: setting(
                env,
                flags.catalog.clone(),
                "GENESIS_BILLING_CATALOG",
                file.catalog,
            )?,
            listen,
            admin_tokens,
            webhook_secrets,
            webhook_tolerance_secs: unbounded(
                env,
                "GENESIS_BILLING_WEBHOOK_TOLERANCE_SECS",
                file.webhook_tolerance_secs,
                300,
            )?,
            resume_interval_secs: unbounded(
                env,
                "GENESIS_BILLING_RESUME_INTERVAL_SECS",
                file.resume_interval_secs,
                30,
            )?,
            lease_secs: unbounded(env, "GENESIS_BILLING_LEASE_SECS", file.lease_secs, 120)?,
            reconcile_interval_secs: unbounded(
                env,
                "GENESIS_BILLING_RECONCILE_INTERVAL_SECS",
                file.reconcile_interval_secs,
                3600,
            )?,
            gap_fill_interval_secs: unbounded(
                env,
                "GENESIS_BILLING_GAP_FILL_INTERVAL_SECS",
                file.gap_fill_interval_secs,
                300,
            )?,
            public_url: public_url.unwrap_or_else(|| "https://example.com".to_owned()),
            warnings: unknown_variables(env),
            owners,
            outbound,
            notices,
        })
    }

    /// The database pool settings.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.db_max_connections,
            statement_timeout: (self.db_statement_timeout_ms > 0)
                .then(|| Duration::from_millis(self.db_statement_timeout_ms)),
        }
    }

    /// `test`, `live` or `disabled`, as `/health` reports it.
    pub fn stripe_mode_label(&self) -> &'static str {
        self.stripe
            .as_ref()
            .map(|s| s.mode.as_str())
            .unwrap_or("disabled")
    }
}

/// A number without a flag or range: variable `name`, else the config file, else `default`.
fn unbounded<T: FromEnv>(
    env: &dyn Env,
    name: &str,
    file: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    Ok(setting(env, None, name, file)?.unwrap_or(default))
}

/// `serve`'s limits, each within a sane range.
fn serve_settings(file: &FileConfig, env: &dyn Env) -> Result<ServeSettings, ConfigError> {
    let d = ServeSettings::default();
    let ops_listen = match setting(
        env,
        None,
        "GENESIS_BILLING_OPS_LISTEN",
        file.ops_listen.clone(),
    )? {
        Some(v) if !v.trim().is_empty() => Some(
            v.trim()
                .parse()
                .map_err(|_| invalid("GENESIS_BILLING_OPS_LISTEN", "expected HOST:PORT"))?,
        ),
        _ => None,
    };
    let metrics_token = resolve(
        None,
        || secret_var(env, "GENESIS_BILLING_METRICS_TOKEN"),
        file.metrics_token
            .clone()
            .map(|t| (SecretString::from(t), "metrics_token".to_owned())),
    )?;
    let metrics_token = match metrics_token {
        Some((t, source)) => {
            let t = SecretString::from(t.expose_secret().trim().to_owned());
            if t.expose_secret().is_empty() {
                return Err(invalid(&source, "is empty"));
            }
            Some(t)
        }
        None => None,
    };
    Ok(ServeSettings {
        header_read_timeout_secs: bounded(
            env,
            "GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS",
            file.header_read_timeout_secs,
            d.header_read_timeout_secs,
            1..=300,
        )?,
        body_read_timeout_secs: bounded(
            env,
            "GENESIS_BILLING_BODY_READ_TIMEOUT_SECS",
            file.body_read_timeout_secs,
            d.body_read_timeout_secs,
            1..=3600,
        )?,
        max_connections: bounded(
            env,
            "GENESIS_BILLING_MAX_CONNECTIONS",
            file.max_connections,
            d.max_connections,
            1..=1_000_000,
        )?,
        max_in_flight_webhook: bounded(
            env,
            "GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK",
            file.max_in_flight_webhook,
            d.max_in_flight_webhook,
            1..=100_000,
        )?,
        max_in_flight_admin: bounded(
            env,
            "GENESIS_BILLING_MAX_IN_FLIGHT_ADMIN",
            file.max_in_flight_admin,
            d.max_in_flight_admin,
            1..=100_000,
        )?,
        max_in_flight_ops: bounded(
            env,
            "GENESIS_BILLING_MAX_IN_FLIGHT_OPS",
            file.max_in_flight_ops,
            d.max_in_flight_ops,
            1..=100_000,
        )?,
        shutdown_grace_secs: bounded(
            env,
            "GENESIS_BILLING_SHUTDOWN_GRACE_SECS",
            file.shutdown_grace_secs,
            d.shutdown_grace_secs,
            0..=3600,
        )?,
        ops_listen,
        metrics_token,
    })
}

// --- Events to the meta-agent (issue 13) ------------------------------------------------------------------

/// The variables `outbound_settings` reads (the `GENESIS_DASHBOARD_*` family and the event retention).
pub const KNOWN_OUTBOUND_VARS: &[&str] = &[
    "GENESIS_DASHBOARD_URL",
    "GENESIS_DASHBOARD_ALLOW_HTTP",
    "GENESIS_DASHBOARD_SECRET",
    "GENESIS_DASHBOARD_SECRET_FILE",
    "GENESIS_DASHBOARD_TIMEOUT_SECS",
    "GENESIS_DASHBOARD_BACKOFF_CAP_SECS",
    "GENESIS_DASHBOARD_GIVE_UP_SECS",
    "GENESIS_DASHBOARD_CONCURRENCY",
    "GENESIS_BILLING_EVENT_RETENTION_DAYS",
];

/// Shortest dashboard signing secret accepted, as for webhook secrets.
pub const MIN_DASHBOARD_SECRET_LEN: usize = 16;

/// Where and how events are pushed, each value in a sane range; a bad URL is described, never echoed.
fn outbound_settings(file: &FileConfig, env: &dyn Env) -> Result<OutboundSettings, ConfigError> {
    let d = OutboundSettings::default();
    let allow_http = setting(
        env,
        None,
        "GENESIS_DASHBOARD_ALLOW_HTTP",
        file.dashboard_allow_http,
    )?
    .unwrap_or(false);
    // An empty value means "not set", as the first version read it.
    let url = match setting(
        env,
        None,
        "GENESIS_DASHBOARD_URL",
        file.dashboard_url.clone(),
    )? {
        Some(raw) if !raw.trim().is_empty() => Some(
            DashboardUrl::parse(&raw, allow_http)
                .map_err(|problem| invalid("GENESIS_DASHBOARD_URL", problem.to_string()))?,
        ),
        _ => None,
    };
    let secrets = secret_list(
        env,
        "GENESIS_DASHBOARD_SECRET",
        file.dashboard_secrets.clone(),
        "dashboard_secrets",
        "dashboard secret",
        MIN_DASHBOARD_SECRET_LEN,
    )?;
    let secs = |name, file: Option<u64>, default: Duration, range| {
        bounded(env, name, file, default.as_secs(), range).map(Duration::from_secs)
    };
    let give_up = secs(
        "GENESIS_DASHBOARD_GIVE_UP_SECS",
        file.dashboard_give_up_secs,
        d.give_up,
        1..=30 * 86_400,
    )?;
    let retention_days = bounded(
        env,
        "GENESIS_BILLING_EVENT_RETENTION_DAYS",
        file.event_retention_days,
        d.retention_days,
        1..=3650,
    )?;
    // An event deleted while still being retried would be lost without ever being dead-lettered.
    if retention_days * 86_400 <= give_up.as_secs() {
        return Err(invalid(
            "GENESIS_BILLING_EVENT_RETENTION_DAYS",
            "must be longer than GENESIS_DASHBOARD_GIVE_UP_SECS",
        ));
    }
    Ok(OutboundSettings {
        url,
        allow_http,
        secrets,
        timeout: secs(
            "GENESIS_DASHBOARD_TIMEOUT_SECS",
            file.dashboard_timeout_secs,
            d.timeout,
            1..=120,
        )?,
        backoff_cap: secs(
            "GENESIS_DASHBOARD_BACKOFF_CAP_SECS",
            file.dashboard_backoff_cap_secs,
            d.backoff_cap,
            1..=86_400,
        )?,
        give_up,
        concurrency: bounded(
            env,
            "GENESIS_DASHBOARD_CONCURRENCY",
            file.dashboard_concurrency,
            d.concurrency,
            1..=1024,
        )?,
        retention_days,
    })
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.kind().to_string(),
    })?;
    // toml's error text quotes the offending line, which may hold a secret: keep only its position.
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: match e.span() {
            Some(span) => format!(
                "invalid TOML near byte {}: {}",
                span.start,
                e.message().lines().next().unwrap_or("")
            ),
            None => "invalid TOML".to_owned(),
        },
    })
}

/// Every notice kind, as `GENESIS_NOTICE_DISABLE` names them.
pub const NOTICE_KINDS: &[&str] = &[
    "payment_failed",
    "action_required",
    "trial_ending",
    "billing_ended",
    "rolled_back",
];

/// What a subscription Stripe marks `unpaid` (its retries exhausted) does to its business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpaidPolicy {
    /// Take the business down (reason `unpaid`, initiated by Stripe): the default.
    Takedown,
    /// Keep it up; Stripe keeps the invoice open.
    Keep,
}

/// How to reach the SMTP server, parsed from `GENESIS_SMTP_URL`. The user and password are secrets, and
/// `Debug` shows neither.
#[derive(Clone)]
pub struct SmtpEndpoint {
    /// `smtps://`: TLS from the first byte; otherwise STARTTLS when offered (required with credentials,
    /// unless the host is a loopback relay).
    pub implicit_tls: bool,
    pub host: String,
    pub port: u16,
    pub credentials: Option<(SecretString, SecretString)>,
}

impl std::fmt::Debug for SmtpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}{}:{}",
            if self.implicit_tls { "smtps" } else { "smtp" },
            if self.credentials.is_some() {
                "***@"
            } else {
                ""
            },
            self.host,
            self.port
        )
    }
}

impl SmtpEndpoint {
    /// Whether the host is this machine (a local relay may take credentials without TLS).
    pub fn is_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Parses `smtp://[user[:password]@]host[:port]` or `smtps://…`. Errors never repeat the URL.
    pub fn parse(url: &SecretString, var: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| invalid(var, why.to_owned());
        let u = url::Url::parse(url.expose_secret().trim())
            .map_err(|_| bad("expected smtp://[user:password@]host[:port] or smtps://…"))?;
        let implicit_tls = match u.scheme() {
            "smtp" => false,
            "smtps" => true,
            _ => return Err(bad("the scheme must be smtp:// or smtps://")),
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .to_owned();
        if !(u.path().is_empty() || u.path() == "/")
            || u.query().is_some()
            || u.fragment().is_some()
        {
            return Err(bad("only scheme, credentials, host and port are allowed"));
        }
        let port = u.port().unwrap_or(if implicit_tls { 465 } else { 587 });
        let decode = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| bad("the user or password is not valid percent-encoded UTF-8"))
        };
        let credentials = match (u.username(), u.password()) {
            ("", None) => None,
            ("", Some(_)) => return Err(bad("a password needs a user")),
            (user, password) => Some((
                SecretString::from(decode(user)?),
                SecretString::from(decode(password.unwrap_or(""))?),
            )),
        };
        Ok(Self {
            implicit_tls,
            host,
            port,
            credentials,
        })
    }
}

/// Percent-decodes a URL component; `None` when it is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Owner notices (issue 14) and the unpaid policy.
#[derive(Debug, Clone)]
pub struct NoticeSettings {
    /// `None` while notices are not configured (no `GENESIS_SMTP_URL` and `GENESIS_NOTICE_FROM`).
    pub smtp: Option<SmtpEndpoint>,
    /// The validated `From` address.
    pub from: Option<String>,
    /// A directory whose `{kind}.subject`, `{kind}.txt` and `{kind}.html` override the built-in templates.
    pub templates: Option<PathBuf>,
    /// Kinds turned off (each one of [`NOTICE_KINDS`]).
    pub disabled: Vec<String>,
    /// A temporary SMTP failure is retried for this long, then the notice is `failed`.
    pub retry_window_secs: u64,
    /// The first retry's delay (doubled each time, at most 30 minutes).
    pub retry_base_ms: u64,
    /// How long a payment-failed notice waits for an action-required one of the same invoice, which
    /// replaces it (Stripe sends both for a charge that needs 3-D Secure).
    pub payment_failed_hold_ms: u64,
    pub unpaid_policy: UnpaidPolicy,
}

impl NoticeSettings {
    /// Whether notices are sent at all.
    pub fn configured(&self) -> bool {
        self.smtp.is_some() && self.from.is_some()
    }
}

/// The notice settings' config file keys.
struct NoticeFile {
    smtp_url: Option<String>,
    from: Option<String>,
    templates: Option<PathBuf>,
    disable: Option<Vec<String>>,
    retry_window_secs: Option<u64>,
    retry_base_ms: Option<u64>,
    payment_failed_hold_ms: Option<u64>,
    unpaid_policy: Option<String>,
}

fn notice_settings(
    file: NoticeFile,
    env: &dyn Env,
    owners: &OwnerSettings,
) -> Result<NoticeSettings, ConfigError> {
    const URL_VAR: &str = "GENESIS_SMTP_URL";
    let url = resolve(
        None,
        || secret_var(env, URL_VAR),
        file.smtp_url.map(|u| {
            (
                SecretString::from(u),
                "smtp_url in the config file".to_owned(),
            )
        }),
    )?;
    let smtp = url
        .map(|(u, source)| SmtpEndpoint::parse(&u, &source))
        .transpose()?;
    let from = setting(env, None, "GENESIS_NOTICE_FROM", file.from)?;
    if let Some(f) = &from {
        f.trim()
            .parse::<lettre::message::Mailbox>()
            .map_err(|_| invalid("GENESIS_NOTICE_FROM", "expected an email address such as billing@example.com or \"Billing <billing@example.com>\""))?;
    }
    let from = from.map(|f| f.trim().to_owned());
    match (&smtp, &from) {
        (Some(_), None) => {
            return Err(invalid(
                "GENESIS_NOTICE_FROM",
                "notices need a From address when GENESIS_SMTP_URL is set",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "GENESIS_SMTP_URL",
                "notices need an SMTP server when GENESIS_NOTICE_FROM is set",
            ))
        }
        _ => {}
    }
    if smtp.is_some() && (owners.link_secrets.is_empty() || !owners.public_url_set) {
        return Err(invalid(
            "GENESIS_SMTP_URL",
            "notices carry a manage link: set GENESIS_BILLING_LINK_SECRET and GENESIS_BILLING_PUBLIC_URL too",
        ));
    }
    let disabled = match setting(env, None, "GENESIS_NOTICE_DISABLE", None::<String>)? {
        Some(v) => v
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect(),
        None => file.disable.unwrap_or_default(),
    };
    for k in &disabled {
        if !NOTICE_KINDS.contains(&k.as_str()) {
            return Err(invalid(
                "GENESIS_NOTICE_DISABLE",
                format!(
                    "unknown notice kind {:?}; expected some of {}",
                    k.chars().take(40).collect::<String>(),
                    NOTICE_KINDS.join(", ")
                ),
            ));
        }
    }
    let unpaid_policy = match setting(
        env,
        None,
        "GENESIS_BILLING_UNPAID_POLICY",
        file.unpaid_policy,
    )?
    .as_deref()
    .map(str::trim)
    {
        None | Some("takedown") => UnpaidPolicy::Takedown,
        Some("keep") => UnpaidPolicy::Keep,
        Some(_) => {
            return Err(invalid(
                "GENESIS_BILLING_UNPAID_POLICY",
                "expected takedown or keep",
            ))
        }
    };
    Ok(NoticeSettings {
        smtp,
        from,
        templates: setting(env, None, "GENESIS_NOTICE_TEMPLATES", file.templates)?,
        disabled,
        retry_window_secs: bounded(
            env,
            "GENESIS_NOTICE_RETRY_WINDOW_SECS",
            file.retry_window_secs,
            86_400,
            60..=30 * 86_400,
        )?,
        retry_base_ms: bounded(
            env,
            "GENESIS_NOTICE_RETRY_BASE_MS",
            file.retry_base_ms,
            30_000,
            10..=60_000,
        )?,
        payment_failed_hold_ms: bounded(
            env,
            "GENESIS_NOTICE_PAYMENT_FAILED_HOLD_MS",
            file.payment_failed_hold_ms,
            30_000,
            0..=600_000,
        )?,
        unpaid_policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk_test_SECRETSECRET123";

    fn load(env: &dyn Env) -> Result<Settings, ConfigError> {
        Settings::load(&Flags::default(), env)
    }

    #[test]
    fn mode_is_decided_by_prefix_only() {
        assert_eq!(StripeMode::of_key("sk_test_abc"), Some(StripeMode::Test));
        assert_eq!(StripeMode::of_key("rk_test_abc"), Some(StripeMode::Test));
        assert_eq!(StripeMode::of_key("sk_live_abc"), Some(StripeMode::Live));
        assert_eq!(StripeMode::of_key("rk_live_abc"), Some(StripeMode::Live));
        assert_eq!(
            StripeMode::of_key("sk_live_testtesttest"),
            Some(StripeMode::Live)
        );
        assert_eq!(StripeMode::of_key("pk_test_abc"), None);
        assert_eq!(StripeMode::of_key("my_test_key"), None);
        assert_eq!(StripeMode::of_key("sk_test_"), None);
        assert_eq!(StripeMode::of_key("sk_test_a b"), None);
    }

    #[test]
    fn the_first_key_variable_set_wins() {
        let s = load(&[
            ("STRIPE_SECRET_KEY", "sk_live_second"),
            ("STRIPE_TEST_KEY", "sk_test_third"),
        ])
        .unwrap();
        assert_eq!(s.stripe.unwrap().mode, StripeMode::Live);
    }

    #[test]
    fn an_invalid_key_is_refused_without_echoing_it() {
        let err = load(&[("STRIPE_API_KEY", "pk_test_SECRETSECRET")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("STRIPE_API_KEY"), "{msg}");
        assert!(!msg.contains("SECRETSECRET"), "{msg}");
    }

    #[test]
    fn a_key_and_its_file_together_are_a_configuration_error() {
        let err = load(&[
            ("STRIPE_API_KEY", KEY),
            ("STRIPE_API_KEY_FILE", "/nonexistent"),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::BothValueAndFile(_)), "{err}");
    }

    #[test]
    fn a_key_is_read_from_a_file_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        let s = load(&[("STRIPE_API_KEY_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(s.stripe.unwrap().key.expose_secret(), KEY);
    }

    #[test]
    fn a_live_key_over_plain_http_is_refused() {
        let err = load(&[
            ("STRIPE_API_KEY", "sk_live_abc"),
            ("STRIPE_API_BASE", "http://127.0.0.1:1"),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::LiveKeyOverHttp(_)));
    }

    #[test]
    fn the_kill_switch_disables_stripe_but_keeps_the_mode_known() {
        let s = load(&[("STRIPE_API_KEY", KEY), ("ENABLE_PAYMENTS", "false")]).unwrap();
        assert!(s.stripe.is_none());
        assert_eq!(s.key_mode, Some(StripeMode::Test));
        assert_eq!(s.stripe_mode_label(), "disabled");
    }

    #[test]
    fn payments_without_a_key_are_disabled_unless_explicitly_enabled() {
        assert!(load(&[]).unwrap().stripe.is_none());
        assert!(matches!(
            load(&[("ENABLE_PAYMENTS", "true")]).unwrap_err(),
            ConfigError::PaymentsWithoutKey
        ));
    }

    #[test]
    fn rollout_percent_must_be_between_0_and_100() {
        assert_eq!(
            load(&[("BILLING_ROLLOUT_PERCENT", "40")])
                .unwrap()
                .rollout_percent,
            40
        );
        assert!(load(&[("BILLING_ROLLOUT_PERCENT", "101")]).is_err());
        assert!(load(&[("BILLING_ROLLOUT_PERCENT", "-1")]).is_err());
        assert!(load(&[("BILLING_ROLLOUT_PERCENT", "lots")]).is_err());
    }

    #[test]
    fn the_default_rate_limit_follows_the_mode() {
        assert_eq!(
            load(&[("STRIPE_API_KEY", KEY)])
                .unwrap()
                .stripe
                .unwrap()
                .rate_limit_per_second,
            25
        );
        assert_eq!(
            load(&[("STRIPE_API_KEY", "sk_live_x")])
                .unwrap()
                .stripe
                .unwrap()
                .rate_limit_per_second,
            90
        );
    }

    #[test]
    fn the_database_pool_is_configurable_with_safe_defaults() {
        let s = load(&[]).unwrap();
        assert_eq!(
            (s.db_max_connections, s.db_statement_timeout_ms),
            (16, 30_000)
        );
        assert_eq!(
            s.store_options().statement_timeout,
            Some(Duration::from_secs(30))
        );
        let s = load(&[
            ("GENESIS_BILLING_DB_MAX_CONNECTIONS", "64"),
            ("GENESIS_BILLING_DB_STATEMENT_TIMEOUT_MS", "0"),
        ])
        .unwrap();
        assert_eq!(s.store_options().max_connections, 64);
        assert_eq!(
            s.store_options().statement_timeout,
            None,
            "0 = server default"
        );
        for bad in ["0", "1001", "many"] {
            assert!(
                load(&[("GENESIS_BILLING_DB_MAX_CONNECTIONS", bad)]).is_err(),
                "{bad}"
            );
        }
        assert!(load(&[("GENESIS_BILLING_DB_STATEMENT_TIMEOUT_MS", "-5")]).is_err());
    }

    /// The sources a secret list is read from, each holding `value` for the setting.
    fn each_source(
        dir: &Path,
        file_key: &str,
        var: &str,
        value: &str,
    ) -> Vec<(String, Result<Settings, ConfigError>)> {
        let config = dir.join("c.toml");
        let list: Vec<&str> = value.split(',').collect();
        std::fs::write(&config, format!("{file_key} = {}\n", toml_list(&list))).unwrap();
        let flags = Flags {
            config_file: Some(config),
            ..Flags::default()
        };
        let from_file = Settings::load(&flags, &[]);
        let from_env = load(&[(var, value)]);
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, value).unwrap();
        let file_var = format!("{var}_FILE");
        let from_secret_file = load(&[(file_var.as_str(), secret_file.to_str().unwrap())]);
        vec![
            ("config file".to_owned(), from_file),
            (var.to_owned(), from_env),
            (file_var, from_secret_file),
        ]
    }

    fn toml_list(items: &[&str]) -> String {
        let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    #[test]
    fn weak_secrets_are_refused_from_every_source_without_being_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let good = "GOODSECRETGOODSECRET42";
        for (file_key, var) in [
            ("webhook_secrets", "STRIPE_WEBHOOK_SECRET"),
            ("admin_tokens", "GENESIS_ADMIN_TOKEN"),
            ("link_secrets", "GENESIS_BILLING_LINK_SECRET"),
        ] {
            for bad in [
                "".to_owned(),
                "   ".to_owned(),
                "LEAK15CHARSLEAK".to_owned(),
                "LEAKY LEAKY LEAKY LEAKY".to_owned(),
                "LEAKY\tLEAKYLEAKYLEAKY".to_owned(),
                format!("{good},"),
                format!("{good},LEAKSHORT"),
            ] {
                for (source, loaded) in each_source(dir.path(), file_key, var, &bad) {
                    let Err(err) = loaded else {
                        panic!("{var} {bad:?} from the {source} was accepted");
                    };
                    let msg = err.to_string();
                    assert!(
                        msg.contains(var) || msg.contains(file_key),
                        "{source}: {msg}"
                    );
                    assert!(!msg.contains("LEAK"), "{source}: {msg}");
                    assert!(!msg.contains(good), "{source}: {msg}");
                }
            }
        }
    }

    #[test]
    fn strong_secrets_are_accepted_from_every_source_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let value = "whsec_0123456789abcdef0123456789abcdef, admin-token-for-tests";
        for (file_key, var) in [
            ("webhook_secrets", "STRIPE_WEBHOOK_SECRET"),
            ("admin_tokens", "GENESIS_ADMIN_TOKEN"),
            ("link_secrets", "GENESIS_BILLING_LINK_SECRET"),
        ] {
            for (source, loaded) in each_source(dir.path(), file_key, var, value) {
                let s = loaded.unwrap_or_else(|e| panic!("{source}: {e}"));
                let list = match file_key {
                    "admin_tokens" => s.admin_tokens,
                    "link_secrets" => s.owners.link_secrets,
                    _ => s.webhook_secrets,
                };
                let got: Vec<&str> = list.iter().map(|t| t.expose_secret()).collect();
                assert_eq!(
                    got,
                    [
                        "whsec_0123456789abcdef0123456789abcdef",
                        "admin-token-for-tests"
                    ],
                    "{source}"
                );
            }
        }
    }

    #[test]
    fn a_config_file_error_does_not_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "stripe_key = \"sk_test_SECRETSECRET\nunterminated").unwrap();
        let flags = Flags {
            config_file: Some(path),
            ..Flags::default()
        };
        let msg = Settings::load(&flags, &[]).unwrap_err().to_string();
        assert!(!msg.contains("SECRETSECRET"), "{msg}");
    }

    #[test]
    fn serve_limits_have_safe_defaults_and_come_from_the_environment_then_the_file() {
        let s = load(&[]).unwrap().serve;
        assert_eq!(
            (
                s.header_read_timeout_secs,
                s.body_read_timeout_secs,
                s.max_connections,
                s.max_in_flight_webhook,
                s.max_in_flight_admin,
                s.max_in_flight_ops,
                s.shutdown_grace_secs,
            ),
            (10, 30, 512, 128, 64, 16, 25)
        );
        assert!(s.ops_listen.is_none() && s.metrics_token.is_none());
        let s = load(&[
            ("GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS", "2"),
            ("GENESIS_BILLING_MAX_CONNECTIONS", "100"),
            ("GENESIS_BILLING_OPS_LISTEN", "127.0.0.1:9090"),
        ])
        .unwrap()
        .serve;
        assert_eq!((s.header_read_timeout_secs, s.max_connections), (2, 100));
        assert_eq!(s.ops_listen, Some("127.0.0.1:9090".parse().unwrap()));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "max_in_flight_webhook = 7\nshutdown_grace_secs = 3\nops_listen = \"127.0.0.1:9191\"\n",
        )
        .unwrap();
        let flags = Flags {
            config_file: Some(path),
            ..Flags::default()
        };
        let s = Settings::load(
            &flags,
            &[
                ("GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK", "9"),
                ("GENESIS_BILLING_SHUTDOWN_GRACE_SECS", "4"),
            ],
        )
        .unwrap()
        .serve;
        // The environment wins over the file (issue 12: flag > environment > file > default).
        assert_eq!((s.max_in_flight_webhook, s.shutdown_grace_secs), (9, 4));
        assert_eq!(s.ops_listen, Some("127.0.0.1:9191".parse().unwrap()));
    }

    #[test]
    fn out_of_range_or_malformed_serve_limits_are_refused() {
        for (name, bad) in [
            ("GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS", "0"),
            ("GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS", "301"),
            ("GENESIS_BILLING_BODY_READ_TIMEOUT_SECS", "0"),
            ("GENESIS_BILLING_MAX_CONNECTIONS", "0"),
            ("GENESIS_BILLING_MAX_CONNECTIONS", "lots"),
            ("GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK", "0"),
            ("GENESIS_BILLING_MAX_IN_FLIGHT_ADMIN", "-1"),
            ("GENESIS_BILLING_MAX_IN_FLIGHT_OPS", "0"),
            ("GENESIS_BILLING_SHUTDOWN_GRACE_SECS", "3601"),
            ("GENESIS_BILLING_OPS_LISTEN", "localhost"),
        ] {
            let err = load(&[(name, bad)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={bad}: {err}");
        }
        let err = load(&[
            ("GENESIS_BILLING_LISTEN", "127.0.0.1:8080"),
            ("GENESIS_BILLING_OPS_LISTEN", "127.0.0.1:8080"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("must differ"), "{err}");
    }

    #[test]
    fn manage_links_have_a_seven_day_default_a_bounded_ttl_and_know_whether_a_public_url_was_given()
    {
        let s = load(&[]).unwrap().owners;
        assert!(s.link_secrets.is_empty() && !s.public_url_set && !s.portal_allow_cancel);
        assert_eq!(s.link_ttl_secs, 604_800);
        let s = load(&[
            ("GENESIS_BILLING_PUBLIC_URL", "https://billing.example.org"),
            ("GENESIS_BILLING_LINK_TTL_SECS", "7776000"),
        ])
        .unwrap()
        .owners;
        assert!(s.public_url_set);
        assert_eq!(s.link_ttl_secs, 7_776_000);
        for bad in ["0", "7776001", "-1", "week"] {
            let err = load(&[("GENESIS_BILLING_LINK_TTL_SECS", bad)]).unwrap_err();
            assert!(
                err.to_string().contains("GENESIS_BILLING_LINK_TTL_SECS"),
                "{bad}: {err}"
            );
        }
        let err = load(&[("GENESIS_BILLING_PORTAL_ALLOW_CANCEL", "maybe")]).unwrap_err();
        assert!(err
            .to_string()
            .contains("GENESIS_BILLING_PORTAL_ALLOW_CANCEL"));
        let s = load(&[("GENESIS_BILLING_LINK_SECRET", "link-SECRET-0123456789")]).unwrap();
        assert!(!format!("{s:?}").contains("link-SECRET"));
    }

    #[test]
    fn the_metrics_token_is_a_secret_read_from_a_value_or_a_file() {
        let s = load(&[("GENESIS_BILLING_METRICS_TOKEN", " tok-SECRET ")]).unwrap();
        assert_eq!(
            s.serve.metrics_token.as_ref().unwrap().expose_secret(),
            "tok-SECRET"
        );
        assert!(!format!("{s:?}").contains("tok-SECRET"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tok-FROMFILE\n").unwrap();
        let s = load(&[("GENESIS_BILLING_METRICS_TOKEN_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(
            s.serve.metrics_token.unwrap().expose_secret(),
            "tok-FROMFILE"
        );
        assert!(matches!(
            load(&[
                ("GENESIS_BILLING_METRICS_TOKEN", "a"),
                ("GENESIS_BILLING_METRICS_TOKEN_FILE", path.to_str().unwrap()),
            ])
            .unwrap_err(),
            ConfigError::BothValueAndFile(_)
        ));
        assert!(load(&[("GENESIS_BILLING_METRICS_TOKEN", "  ")]).is_err());
    }

    #[test]
    fn a_bad_dashboard_url_stops_start_up_naming_the_variable_never_the_url() {
        for (raw, problem) in [
            ("/relative/path", "not an absolute URL"),
            ("ftp://dash.example/", "https://"),
            (
                "https://user:SECRETPW@dash.example/",
                "user name or password",
            ),
            ("http://10.0.0.1/SECRETPATH", "GENESIS_DASHBOARD_ALLOW_HTTP"),
            ("https://dash.example/#SECRETFRAG", "fragment"),
        ] {
            let err = load(&[("GENESIS_DASHBOARD_URL", raw)]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("GENESIS_DASHBOARD_URL"), "{msg}");
            assert!(msg.contains(problem), "{raw}: {msg}");
            assert!(!msg.contains("SECRET"), "{msg}");
        }
        let huge = format!("https://dash.example/{}", "x".repeat(5000));
        assert!(load(&[("GENESIS_DASHBOARD_URL", huge.as_str())]).is_err());
        let allowed = load(&[
            ("GENESIS_DASHBOARD_URL", "http://10.0.0.1/"),
            ("GENESIS_DASHBOARD_ALLOW_HTTP", "true"),
        ])
        .unwrap();
        assert_eq!(allowed.outbound.url.unwrap().origin(), "http://10.0.0.1");
        let loopback = load(&[("GENESIS_DASHBOARD_URL", "http://127.0.0.1:9/")]).unwrap();
        assert!(loopback.outbound.url.is_some());
        assert!(load(&[("GENESIS_DASHBOARD_URL", "  ")])
            .unwrap()
            .outbound
            .url
            .is_none());
        assert!(load(&[("GENESIS_DASHBOARD_ALLOW_HTTP", "maybe")]).is_err());
    }

    #[test]
    fn dashboard_secrets_pass_the_same_checks_as_other_secrets_without_being_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let good = "GOODSECRETGOODSECRET42";
        for bad in [
            "",
            "LEAK15CHARSLEAK",
            "LEAKY LEAKY LEAKY LEAKY",
            &format!("{good},"),
        ] {
            for (source, loaded) in each_source(
                dir.path(),
                "dashboard_secrets",
                "GENESIS_DASHBOARD_SECRET",
                bad,
            ) {
                let Err(err) = loaded else {
                    panic!("{bad:?} from the {source} was accepted");
                };
                let msg = err.to_string();
                assert!(msg.to_lowercase().contains("dashboard"), "{source}: {msg}");
                assert!(
                    !msg.contains("LEAK") && !msg.contains(good),
                    "{source}: {msg}"
                );
            }
        }
        let value = "old-dashboard-secret-1, new-dashboard-secret-2";
        for (source, loaded) in each_source(
            dir.path(),
            "dashboard_secrets",
            "GENESIS_DASHBOARD_SECRET",
            value,
        ) {
            let s = loaded.unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(
                joined(&s.outbound.secrets),
                "old-dashboard-secret-1,new-dashboard-secret-2"
            );
            assert!(!format!("{s:?}").contains("dashboard-secret"), "{source}");
        }
    }

    #[test]
    fn delivery_limits_have_defaults_and_ranges_and_retention_outlasts_the_give_up_window() {
        let o = load(&[]).unwrap().outbound;
        assert_eq!(
            (
                o.url.is_none(),
                o.timeout.as_secs(),
                o.backoff_cap.as_secs(),
                o.give_up.as_secs(),
                o.concurrency,
                o.retention_days
            ),
            (true, 5, 3600, 259_200, 16, 30)
        );
        for (name, bad) in [
            ("GENESIS_DASHBOARD_TIMEOUT_SECS", "0"),
            ("GENESIS_DASHBOARD_TIMEOUT_SECS", "121"),
            ("GENESIS_DASHBOARD_BACKOFF_CAP_SECS", "0"),
            ("GENESIS_DASHBOARD_GIVE_UP_SECS", "0"),
            ("GENESIS_DASHBOARD_GIVE_UP_SECS", "-1"),
            ("GENESIS_DASHBOARD_CONCURRENCY", "0"),
            ("GENESIS_DASHBOARD_CONCURRENCY", "lots"),
            ("GENESIS_BILLING_EVENT_RETENTION_DAYS", "0"),
            ("GENESIS_BILLING_EVENT_RETENTION_DAYS", "3"),
        ] {
            let err = load(&[(name, bad)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={bad}: {err}");
        }
        let err = load(&[
            ("GENESIS_DASHBOARD_GIVE_UP_SECS", "864000"),
            ("GENESIS_BILLING_EVENT_RETENTION_DAYS", "10"),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("longer than GENESIS_DASHBOARD_GIVE_UP_SECS"),
            "{err}"
        );
        assert!(load(&[
            ("GENESIS_DASHBOARD_GIVE_UP_SECS", "60"),
            ("GENESIS_BILLING_EVENT_RETENTION_DAYS", "1"),
        ])
        .is_ok());
    }

    #[test]
    fn an_unknown_genesis_dashboard_variable_is_warned_about_by_name() {
        let s = load(&[
            ("GENESIS_DASHBOARD_SECERT", "VALUE-SECRET-44"),
            ("GENESIS_DASHBOARD_URL", "https://dash.example/"),
        ])
        .unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("GENESIS_DASHBOARD_SECERT"));
        assert!(!s.warnings[0].contains("VALUE-SECRET"));
    }

    /// How a value is written in the TOML config file.
    #[derive(Clone, Copy)]
    enum Toml {
        Num,
        Str,
        Bool,
        List,
    }

    /// One setting: where it can be given and how to read it back from `Settings`.
    struct Case {
        env: &'static str,
        file_key: &'static str,
        flag: Option<fn(&mut Flags, &str)>,
        toml: Toml,
        /// The value given as the flag, in the environment and in the file: valid and all different.
        values: [&'static str; 3],
        default: &'static str,
        /// A secret, also read from the file named by `env` + `_FILE`.
        secret: bool,
        read: fn(&Settings) -> String,
    }

    fn stripe(s: &Settings) -> &StripeSettings {
        s.stripe.as_ref().expect("payments are on")
    }

    fn joined(list: &[SecretString]) -> String {
        let list: Vec<&str> = list.iter().map(|t| t.expose_secret()).collect();
        list.join(",")
    }

    /// Every setting (each Stripe key variable is its own row).
    fn cases() -> Vec<Case> {
        use Toml::*;
        let key = |env| Case {
            env,
            file_key: "stripe_key",
            flag: Some(|f, v| f.stripe_key = Some(SecretString::from(v.to_owned()))),
            toml: Str,
            values: ["sk_test_fromflag", "sk_test_fromenv", "sk_test_fromfile"],
            default: "",
            secret: true,
            read: |s| {
                s.stripe
                    .as_ref()
                    .map(|st| st.key.expose_secret().to_owned())
                    .unwrap_or_default()
            },
        };
        let num = |env, file_key, values, default, read| Case {
            env,
            file_key,
            flag: None,
            toml: Num,
            values,
            default,
            secret: false,
            read,
        };
        let tokens = [
            "-",
            "env-token-0123456789,env-token-abcdefghij",
            "file-token-0123456789,file-token-abcdefghij",
        ];
        vec![
            key("STRIPE_API_KEY"),
            key("STRIPE_SECRET_KEY"),
            key("STRIPE_TEST_KEY"),
            Case {
                env: "STRIPE_API_BASE",
                file_key: "stripe_api_base",
                flag: Some(|f, v| f.stripe_api_base = Some(v.to_owned())),
                toml: Str,
                values: ["https://flag.test", "https://env.test", "https://file.test"],
                default: "https://api.stripe.com",
                secret: false,
                read: |s| stripe(s).api_base.clone(),
            },
            Case {
                env: "ENABLE_PAYMENTS",
                file_key: "enable_payments",
                flag: None,
                toml: Bool,
                values: ["-", "false", "true"],
                default: "true",
                secret: false,
                read: |s| s.stripe.is_some().to_string(),
            },
            num(
                "BILLING_ROLLOUT_PERCENT",
                "billing_rollout_percent",
                ["-", "20", "30"],
                "100",
                |s| s.rollout_percent.to_string(),
            ),
            Case {
                env: "DATABASE_URL",
                file_key: "database_url",
                flag: Some(|f, v| f.database_url = Some(v.to_owned())),
                toml: Str,
                values: ["sqlite://flag.db", "sqlite://env.db", "postgres://db/file"],
                default: "sqlite://genesis-billing.db",
                secret: false,
                read: |s| s.database_url.expose().to_owned(),
            },
            Case {
                env: "GENESIS_BILLING_CATALOG",
                file_key: "catalog",
                flag: Some(|f, v| f.catalog = Some(PathBuf::from(v))),
                toml: Str,
                values: ["flag.toml", "env.toml", "file.toml"],
                default: "",
                secret: false,
                read: |s| {
                    s.catalog_path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                },
            },
            Case {
                env: "GENESIS_BILLING_LISTEN",
                file_key: "listen",
                flag: Some(|f, v| f.listen = Some(v.to_owned())),
                toml: Str,
                values: ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"],
                default: "127.0.0.1:8080",
                secret: false,
                read: |s| s.listen.to_string(),
            },
            Case {
                env: "GENESIS_ADMIN_TOKEN",
                file_key: "admin_tokens",
                flag: None,
                toml: List,
                values: tokens,
                default: "",
                secret: true,
                read: |s| joined(&s.admin_tokens),
            },
            Case {
                env: "STRIPE_WEBHOOK_SECRET",
                file_key: "webhook_secrets",
                flag: None,
                toml: List,
                values: tokens,
                default: "",
                secret: true,
                read: |s| joined(&s.webhook_secrets),
            },
            Case {
                env: "GENESIS_BILLING_LINK_SECRET",
                file_key: "link_secrets",
                flag: None,
                toml: List,
                values: tokens,
                default: "",
                secret: true,
                read: |s| joined(&s.owners.link_secrets),
            },
            num(
                "GENESIS_BILLING_LINK_TTL_SECS",
                "link_ttl_secs",
                ["-", "3600", "86400"],
                "604800",
                |s| s.owners.link_ttl_secs.to_string(),
            ),
            Case {
                env: "GENESIS_BILLING_PORTAL_ALLOW_CANCEL",
                file_key: "portal_allow_cancel",
                flag: None,
                toml: Bool,
                values: ["-", "true", "false"],
                default: "false",
                secret: false,
                read: |s| s.owners.portal_allow_cancel.to_string(),
            },
            Case {
                env: "GENESIS_BILLING_PUBLIC_URL",
                file_key: "public_url",
                flag: None,
                toml: Str,
                values: ["-", "https://env.test", "https://file.test"],
                default: "https://example.com",
                secret: false,
                read: |s| s.public_url.clone(),
            },
            num(
                "GENESIS_BILLING_STRIPE_TIMEOUT_SECS",
                "stripe_timeout_secs",
                ["-", "6", "7"],
                "20",
                |s| stripe(s).timeout.as_secs().to_string(),
            ),
            num(
                "GENESIS_BILLING_STRIPE_MAX_ATTEMPTS",
                "stripe_max_attempts",
                ["-", "5", "6"],
                "3",
                |s| stripe(s).retry.max_attempts.to_string(),
            ),
            num(
                "GENESIS_BILLING_STRIPE_RETRY_BASE_MS",
                "stripe_retry_base_ms",
                ["-", "200", "300"],
                "1000",
                |s| stripe(s).retry.base_delay.as_millis().to_string(),
            ),
            num(
                "GENESIS_BILLING_STRIPE_RATE_LIMIT",
                "stripe_rate_limit",
                ["-", "2", "3"],
                "25",
                |s| stripe(s).rate_limit_per_second.to_string(),
            ),
            num(
                "GENESIS_BILLING_WEBHOOK_TOLERANCE_SECS",
                "webhook_tolerance_secs",
                ["-", "60", "90"],
                "300",
                |s| s.webhook_tolerance_secs.to_string(),
            ),
            num(
                "GENESIS_BILLING_RESUME_INTERVAL_SECS",
                "resume_interval_secs",
                ["-", "5", "6"],
                "30",
                |s| s.resume_interval_secs.to_string(),
            ),
            num(
                "GENESIS_BILLING_GAP_FILL_INTERVAL_SECS",
                "gap_fill_interval_secs",
                ["-", "0", "60"],
                "300",
                |s| s.gap_fill_interval_secs.to_string(),
            ),
            num(
                "GENESIS_BILLING_RECONCILE_INTERVAL_SECS",
                "reconcile_interval_secs",
                ["-", "0", "600"],
                "3600",
                |s| s.reconcile_interval_secs.to_string(),
            ),
            num(
                "GENESIS_BILLING_LEASE_SECS",
                "lease_secs",
                ["-", "10", "20"],
                "120",
                |s| s.lease_secs.to_string(),
            ),
            num(
                "GENESIS_BILLING_DB_MAX_CONNECTIONS",
                "db_max_connections",
                ["-", "2", "3"],
                "16",
                |s| s.db_max_connections.to_string(),
            ),
            num(
                "GENESIS_BILLING_DB_STATEMENT_TIMEOUT_MS",
                "db_statement_timeout_ms",
                ["-", "0", "5000"],
                "30000",
                |s| s.db_statement_timeout_ms.to_string(),
            ),
            num(
                "GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS",
                "header_read_timeout_secs",
                ["-", "2", "3"],
                "10",
                |s| s.serve.header_read_timeout_secs.to_string(),
            ),
            num(
                "GENESIS_BILLING_BODY_READ_TIMEOUT_SECS",
                "body_read_timeout_secs",
                ["-", "2", "3"],
                "30",
                |s| s.serve.body_read_timeout_secs.to_string(),
            ),
            num(
                "GENESIS_BILLING_MAX_CONNECTIONS",
                "max_connections",
                ["-", "2", "3"],
                "512",
                |s| s.serve.max_connections.to_string(),
            ),
            num(
                "GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK",
                "max_in_flight_webhook",
                ["-", "2", "3"],
                "128",
                |s| s.serve.max_in_flight_webhook.to_string(),
            ),
            num(
                "GENESIS_BILLING_MAX_IN_FLIGHT_ADMIN",
                "max_in_flight_admin",
                ["-", "2", "3"],
                "64",
                |s| s.serve.max_in_flight_admin.to_string(),
            ),
            num(
                "GENESIS_BILLING_MAX_IN_FLIGHT_OPS",
                "max_in_flight_ops",
                ["-", "2", "3"],
                "16",
                |s| s.serve.max_in_flight_ops.to_string(),
            ),
            num(
                "GENESIS_BILLING_SHUTDOWN_GRACE_SECS",
                "shutdown_grace_secs",
                ["-", "0", "3"],
                "25",
                |s| s.serve.shutdown_grace_secs.to_string(),
            ),
            Case {
                env: "GENESIS_BILLING_OPS_LISTEN",
                file_key: "ops_listen",
                flag: None,
                toml: Str,
                values: ["-", "127.0.0.1:19002", "127.0.0.1:19003"],
                default: "",
                secret: false,
                read: |s| {
                    s.serve
                        .ops_listen
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                },
            },
            Case {
                env: "GENESIS_BILLING_METRICS_TOKEN",
                file_key: "metrics_token",
                flag: None,
                toml: Str,
                values: ["-", "env-metrics-token", "file-metrics-token"],
                default: "",
                secret: true,
                read: |s| {
                    s.serve
                        .metrics_token
                        .as_ref()
                        .map(|t| t.expose_secret().to_owned())
                        .unwrap_or_default()
                },
            },
            // Events to the meta-agent (issue 13).
            Case {
                env: "GENESIS_DASHBOARD_URL",
                file_key: "dashboard_url",
                flag: None,
                toml: Str,
                values: ["-", "https://env.test/", "https://file.test/"],
                default: "",
                secret: false,
                read: |s| {
                    s.outbound
                        .url
                        .as_ref()
                        .map(|u| u.as_str().to_owned())
                        .unwrap_or_default()
                },
            },
            Case {
                env: "GENESIS_DASHBOARD_ALLOW_HTTP",
                file_key: "dashboard_allow_http",
                flag: None,
                toml: Bool,
                values: ["-", "true", "false"],
                default: "false",
                secret: false,
                read: |s| s.outbound.allow_http.to_string(),
            },
            Case {
                env: "GENESIS_DASHBOARD_SECRET",
                file_key: "dashboard_secrets",
                flag: None,
                toml: List,
                values: tokens,
                default: "",
                secret: true,
                read: |s| joined(&s.outbound.secrets),
            },
            num(
                "GENESIS_DASHBOARD_TIMEOUT_SECS",
                "dashboard_timeout_secs",
                ["-", "6", "7"],
                "5",
                |s| s.outbound.timeout.as_secs().to_string(),
            ),
            num(
                "GENESIS_DASHBOARD_BACKOFF_CAP_SECS",
                "dashboard_backoff_cap_secs",
                ["-", "60", "120"],
                "3600",
                |s| s.outbound.backoff_cap.as_secs().to_string(),
            ),
            num(
                "GENESIS_DASHBOARD_GIVE_UP_SECS",
                "dashboard_give_up_secs",
                ["-", "600", "700"],
                "259200",
                |s| s.outbound.give_up.as_secs().to_string(),
            ),
            num(
                "GENESIS_DASHBOARD_CONCURRENCY",
                "dashboard_concurrency",
                ["-", "2", "3"],
                "16",
                |s| s.outbound.concurrency.to_string(),
            ),
            num(
                "GENESIS_BILLING_EVENT_RETENTION_DAYS",
                "event_retention_days",
                ["-", "40", "50"],
                "30",
                |s| s.outbound.retention_days.to_string(),
            ),
            Case {
                env: "GENESIS_BILLING_UNPAID_POLICY",
                file_key: "billing_unpaid_policy",
                flag: None,
                toml: Str,
                values: ["-", "keep", "takedown"],
                default: "takedown",
                secret: false,
                read: |s| match s.notices.unpaid_policy {
                    UnpaidPolicy::Takedown => "takedown".into(),
                    UnpaidPolicy::Keep => "keep".into(),
                },
            },
            Case {
                env: "GENESIS_NOTICE_TEMPLATES",
                file_key: "notice_templates",
                flag: None,
                toml: Str,
                values: ["-", "env-templates", "file-templates"],
                default: "",
                secret: false,
                read: |s| {
                    s.notices
                        .templates
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                },
            },
            num(
                "GENESIS_NOTICE_RETRY_WINDOW_SECS",
                "notice_retry_window_secs",
                ["-", "3600", "7200"],
                "86400",
                |s| s.notices.retry_window_secs.to_string(),
            ),
            num(
                "GENESIS_NOTICE_RETRY_BASE_MS",
                "notice_retry_base_ms",
                ["-", "1000", "2000"],
                "30000",
                |s| s.notices.retry_base_ms.to_string(),
            ),
            num(
                "GENESIS_NOTICE_PAYMENT_FAILED_HOLD_MS",
                "notice_payment_failed_hold_ms",
                ["-", "0", "5000"],
                "30000",
                |s| s.notices.payment_failed_hold_ms.to_string(),
            ),
        ]
    }

    fn toml_value(toml: Toml, v: &str) -> String {
        match toml {
            Toml::Num | Toml::Bool => v.to_owned(),
            Toml::Str => format!("{v:?}"),
            Toml::List => toml_list(&v.split(',').collect::<Vec<_>>()),
        }
    }

    #[test]
    fn every_setting_takes_the_flag_then_the_environment_then_the_file_then_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.toml");
        let secret_file = dir.path().join("secret");
        for case in cases() {
            let [flag_v, env_v, file_v] = case.values;
            assert!(
                flag_v != env_v && env_v != file_v && flag_v != file_v,
                "{}",
                case.env
            );
            // A secret's environment value may also come from `VAR_FILE`.
            let env_forms: &[bool] = if case.secret {
                &[false, true]
            } else {
                &[false]
            };
            for &via_file_var in env_forms {
                for sources in 0u8..8 {
                    let (flag_on, env_on, file_on) =
                        (sources & 4 != 0, sources & 2 != 0, sources & 1 != 0);
                    if flag_on && case.flag.is_none() || via_file_var && !env_on {
                        continue;
                    }
                    let label = format!(
                        "{} (flag {flag_on}, env {env_on}{}, file {file_on})",
                        case.env,
                        if via_file_var { " via _FILE" } else { "" }
                    );
                    let mut flags = Flags::default();
                    let mut env: Vec<(String, String)> = Vec::new();
                    // Settings read from `Settings::stripe` need payments on: the last key variable,
                    // which every key row outranks or does not use.
                    if case.file_key != "stripe_key" {
                        env.push(("STRIPE_TEST_KEY".into(), "sk_test_baseline".into()));
                    }
                    if let (true, Some(set)) = (flag_on, case.flag) {
                        set(&mut flags, flag_v);
                    }
                    if env_on && via_file_var {
                        std::fs::write(&secret_file, format!("{env_v}\n")).unwrap();
                        let path = secret_file.display().to_string();
                        env.push((format!("{}_FILE", case.env), path));
                    } else if env_on {
                        env.push((case.env.into(), env_v.into()));
                    }
                    if file_on {
                        let line =
                            format!("{} = {}\n", case.file_key, toml_value(case.toml, file_v));
                        std::fs::write(&config, line).unwrap();
                        flags.config_file = Some(config.clone());
                    }
                    let expected = match (flag_on, env_on, file_on) {
                        (true, _, _) => flag_v,
                        (false, true, _) => env_v,
                        (false, false, true) => file_v,
                        (false, false, false) => case.default,
                    };
                    let s = Settings::load(&flags, &env).unwrap_or_else(|e| panic!("{label}: {e}"));
                    assert_eq!((case.read)(&s), expected, "{label}");
                    assert!(s.warnings.is_empty(), "{label}: {:?}", s.warnings);
                }
            }
        }
    }

    #[test]
    fn the_precedence_table_lists_every_known_variable() {
        let rows: Vec<&str> = cases().iter().map(|c| c.env).collect();
        for known in KNOWN_GENESIS_BILLING_VARS {
            let covered = rows.contains(known)
                || ["GENESIS_BILLING_CONFIG", "GENESIS_BILLING_BIN"].contains(known)
                || known
                    .strip_suffix("_FILE")
                    .is_some_and(|v| cases().iter().any(|c| c.secret && c.env == v));
            assert!(covered, "{known} has no row in the precedence table");
        }
    }

    #[test]
    fn an_unknown_genesis_billing_variable_is_warned_about_by_name_never_by_value() {
        let s = load(&[
            ("GENESIS_BILLING_STRIPE_RATE_LIMT", "VALUE-SECRET-42"),
            ("GENESIS_BILLING_STRIPE_RATE_LIMIT", "5"),
            ("GENESIS_BILLING_METRICS_TOKEN_FILE_X", "VALUE-SECRET-43"),
            ("STRIPE_RATE_LIMT", "not ours"),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("GENESIS_BILLING_METRICS_TOKEN_FILE_X"));
        assert!(s.warnings[1].contains("GENESIS_BILLING_STRIPE_RATE_LIMT"));
        for w in &s.warnings {
            assert!(!w.contains("VALUE-SECRET"), "{w}");
        }
        assert!(
            load(&[("GENESIS_BILLING_CONFIG_", "x")])
                .unwrap()
                .warnings
                .len()
                == 1
        );
    }

    #[test]
    fn an_unknown_config_file_key_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "stripe_rate_limit = 5\nstripe_rate_limt = 6\n").unwrap();
        let flags = Flags {
            config_file: Some(path),
            ..Flags::default()
        };
        let err =
            Settings::load(&flags, &[("GENESIS_BILLING_STRIPE_RATE_LIMIT", "7")]).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("stripe_rate_limt"), "{err}");
    }

    #[test]
    fn a_flag_wins_without_reading_the_environment_and_the_environment_wins_over_the_file() {
        // A key flag is used even when the key variables are broken; without the flag they are refused.
        let broken = [
            ("STRIPE_API_KEY", "x"),
            ("STRIPE_API_KEY_FILE", "/nonexistent"),
        ];
        let flags = Flags {
            stripe_key: Some(SecretString::from(KEY)),
            ..Flags::default()
        };
        assert_eq!(
            Settings::load(&flags, &broken).unwrap().key_mode,
            Some(StripeMode::Test)
        );
        assert!(matches!(
            load(&broken).unwrap_err(),
            ConfigError::BothValueAndFile(_)
        ));
        // A malformed variable is an error even when the file holds a valid value: it would have won.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "billing_rollout_percent = 50\n").unwrap();
        let flags = Flags {
            config_file: Some(path),
            ..Flags::default()
        };
        let err = Settings::load(&flags, &[("BILLING_ROLLOUT_PERCENT", "lots")]).unwrap_err();
        assert!(err.to_string().contains("BILLING_ROLLOUT_PERCENT"), "{err}");
    }
}

#[cfg(test)]
mod notice_tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load(&Flags::default(), &env)
    }

    const LINKS: [(&str, &str); 2] = [
        (
            "GENESIS_BILLING_LINK_SECRET",
            "a-link-secret-of-enough-length",
        ),
        ("GENESIS_BILLING_PUBLIC_URL", "https://billing.example.org"),
    ];

    #[test]
    fn an_smtp_url_is_parsed_and_its_credentials_never_show() {
        let url = SecretString::from("smtp://us%40er:p%3Ass-SECRET@mail.example.org");
        let e = SmtpEndpoint::parse(&url, "GENESIS_SMTP_URL").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.implicit_tls),
            ("mail.example.org", 587, false)
        );
        let (user, pass) = e.credentials.as_ref().unwrap();
        assert_eq!(user.expose_secret(), "us@er");
        assert_eq!(pass.expose_secret(), "p:ss-SECRET");
        assert_eq!(format!("{e:?}"), "smtp://***@mail.example.org:587");
        assert!(!e.is_loopback());
        let tls = SmtpEndpoint::parse(&SecretString::from("smtps://[::1]"), "X").unwrap();
        assert_eq!(
            (tls.port, tls.implicit_tls, tls.is_loopback()),
            (465, true, true)
        );
        for bad in [
            "http://mail.example.org",
            "smtp://",
            "smtp://:pw-SECRET@mail.example.org",
            "smtp://mail.example.org/path",
            "smtp://mail.example.org?x=1",
            "not a url pw-SECRET",
            "smtp://u:%ff%fe-SECRET@mail.example.org",
        ] {
            let err = SmtpEndpoint::parse(&SecretString::from(bad), "GENESIS_SMTP_URL")
                .unwrap_err()
                .to_string();
            assert!(err.contains("GENESIS_SMTP_URL"), "{bad}: {err}");
            assert!(!err.contains("SECRET"), "{bad}: {err}");
        }
    }

    #[test]
    fn notices_need_both_settings_and_a_manage_link_and_validate_what_they_name() {
        let s = load(&[]).unwrap().notices;
        assert!(!s.configured());
        assert_eq!(s.unpaid_policy, UnpaidPolicy::Takedown);
        assert_eq!(s.retry_base_ms, 30_000, "the first retry within a minute");
        let ok = [
            LINKS[0],
            LINKS[1],
            ("GENESIS_SMTP_URL", "smtp://127.0.0.1:2525"),
            ("GENESIS_NOTICE_FROM", "Billing <billing@example.org>"),
            ("GENESIS_NOTICE_DISABLE", " trial_ending, rolled_back "),
            ("GENESIS_BILLING_UNPAID_POLICY", "keep"),
        ];
        let s = load(&ok).unwrap().notices;
        assert!(s.configured());
        assert_eq!(s.disabled, ["trial_ending", "rolled_back"]);
        assert_eq!(s.unpaid_policy, UnpaidPolicy::Keep);
        let without_links = load(&ok[2..]).unwrap_err().to_string();
        assert!(
            without_links.contains("GENESIS_BILLING_LINK_SECRET"),
            "{without_links}"
        );
        let without_from = load(&[LINKS[0], LINKS[1], ok[2]]).unwrap_err().to_string();
        assert!(
            without_from.contains("GENESIS_NOTICE_FROM"),
            "{without_from}"
        );
        let mut hostile = ok;
        hostile[3] = ("GENESIS_NOTICE_FROM", "a@b.example\r\nBcc: x@evil.example");
        assert!(load(&hostile).is_err());
        hostile = ok;
        hostile[4] = ("GENESIS_NOTICE_DISABLE", "payment_failed,everything");
        assert!(load(&hostile)
            .unwrap_err()
            .to_string()
            .contains("unknown notice kind"));
        let huge = "x".repeat(100_000);
        hostile = ok;
        hostile[4] = ("GENESIS_NOTICE_DISABLE", &huge);
        assert!(
            load(&hostile).unwrap_err().to_string().len() < 400,
            "the error stays short"
        );
        let both = load(&[
            ("GENESIS_SMTP_URL", "smtp://h"),
            ("GENESIS_SMTP_URL_FILE", "/nonexistent"),
        ])
        .unwrap_err();
        assert!(matches!(both, ConfigError::BothValueAndFile(_)), "{both}");
    }

    #[test]
    fn the_smtp_url_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smtp");
        std::fs::write(&path, "smtps://u:file-SECRET@mail.example.org:2465\n").unwrap();
        let s = load(&[
            LINKS[0],
            LINKS[1],
            ("GENESIS_SMTP_URL_FILE", path.to_str().unwrap()),
            ("GENESIS_NOTICE_FROM", "billing@example.org"),
        ])
        .unwrap();
        let e = s.notices.smtp.as_ref().unwrap();
        assert_eq!((e.port, e.implicit_tls), (2465, true));
        assert!(!format!("{s:?}").contains("file-SECRET"));
    }
}
