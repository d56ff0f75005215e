//! Settings from flags, a TOML config file and the environment (SPEC §4), validated once at start-up.
//!
//! Precedence for every setting: command-line flag, then config file, then environment, then default.
//! Secrets are wrapped in `SecretString` the moment they are read and never appear in an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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

/// A database URL whose password never shows in `Debug` or `Display`.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    pub fn is_postgres(&self) -> bool {
        let u = self.expose();
        u.starts_with("postgres://") || u.starts_with("postgresql://")
    }
    /// The URL with any password replaced by `***`: the one in the user info (parsed, so an `@` in the
    /// password cannot move the split) and the value of any query parameter that holds a secret. A URL
    /// that does not parse shows only its scheme.
    pub fn redacted(&self) -> String {
        let raw = self.expose();
        let Ok(mut url) = url::Url::parse(raw) else {
            let scheme = raw.split_once("://").map_or("", |(s, _)| s);
            return format!("{scheme}://***");
        };
        let secret_params = url.query_pairs().any(|(k, _)| is_secret_param(&k));
        if url.password().is_none() && !secret_params {
            return raw.to_owned();
        }
        if url.password().is_some() && url.set_password(Some("***")).is_err() {
            return format!("{}://***", url.scheme());
        }
        if secret_params {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret_param(&k) {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

/// Connection parameters whose value is a secret (`password`, `sslpassword`, any `…token`, `…secret`).
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "pwd", "secret", "token"]
        .iter()
        .any(|s| name.contains(s))
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
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
}

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
    header_read_timeout_secs: Option<u64>,
    body_read_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_in_flight_webhook: Option<usize>,
    max_in_flight_admin: Option<usize>,
    max_in_flight_ops: Option<usize>,
    shutdown_grace_secs: Option<u64>,
    ops_listen: Option<String>,
    metrics_token: Option<String>,
}

/// Where environment variables come from; tests pass a map instead of touching the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Reads `NAME` or the file named by `NAME_FILE`, wrapped as a secret at once.
fn secret_var(env: &dyn Env, name: &str) -> Result<Option<SecretString>, ConfigError> {
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
            Ok(Some(v))
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
            Ok(Some(v))
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

/// A secret list from the config file key `file_key`, else from `var` (or `var_FILE`), checked.
fn secret_list(
    file_value: Option<Vec<String>>,
    file_key: &str,
    env: &dyn Env,
    var: &str,
    what: &str,
    min: usize,
) -> Result<Vec<SecretString>, ConfigError> {
    match file_value {
        Some(list) => check_secrets(
            list.into_iter().map(SecretString::from).collect(),
            &format!("{file_key} in the config file"),
            what,
            min,
        ),
        None => {
            let source = if env.var(var).is_some() {
                var.to_owned()
            } else {
                format!("{var}_FILE")
            };
            match secret_var(env, var)? {
                Some(v) => check_secrets(split_secrets(&v), &source, what, min),
                None => Ok(Vec::new()),
            }
        }
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
    /// Builds settings from flags, the config file (flag `--config` or `GENESIS_BILLING_CONFIG`) and `env`.
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

        // The key: flag, config file, then the three variables in order; first one set wins.
        let mut key_source = None;
        let mut key = None;
        if let Some(k) = &flags.stripe_key {
            key = Some(k.clone());
            key_source = Some("--stripe-key".to_owned());
        } else if let Some(k) = file.stripe_key.clone() {
            key = Some(SecretString::from(k));
            key_source = Some("stripe_key in the config file".to_owned());
        } else {
            for name in ["STRIPE_API_KEY", "STRIPE_SECRET_KEY", "STRIPE_TEST_KEY"] {
                if let Some(k) = secret_var(env, name)? {
                    key = Some(k);
                    key_source = Some(name.to_owned());
                    break;
                }
            }
        }
        let key = key.map(|k| SecretString::from(k.expose_secret().trim().to_owned()));
        let key_mode = match (&key, &key_source) {
            (Some(k), Some(source)) => {
                Some(StripeMode::of_key(k.expose_secret()).ok_or_else(|| {
                    ConfigError::InvalidStripeKey {
                        source_name: source.clone(),
                    }
                })?)
            }
            _ => None,
        };

        let enable_payments = match env.var("ENABLE_PAYMENTS") {
            Some(v) => Some(parse_bool("ENABLE_PAYMENTS", &v)?),
            None => file.enable_payments,
        };
        let payments_on = match (enable_payments, &key) {
            (Some(true), None) => return Err(ConfigError::PaymentsWithoutKey),
            (Some(false), _) | (None, None) => false,
            (_, Some(_)) => true,
        };

        let api_base = flags
            .stripe_api_base
            .clone()
            .or(file.stripe_api_base.clone())
            .or_else(|| env.var("STRIPE_API_BASE"))
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

        let num_env = |name: &str| env.var(name);
        let timeout_secs = match num_env("GENESIS_BILLING_STRIPE_TIMEOUT_SECS") {
            Some(v) => parse_num("GENESIS_BILLING_STRIPE_TIMEOUT_SECS", &v)?,
            None => file.stripe_timeout_secs.unwrap_or(20),
        };
        let max_attempts: u32 = match num_env("GENESIS_BILLING_STRIPE_MAX_ATTEMPTS") {
            Some(v) => parse_num("GENESIS_BILLING_STRIPE_MAX_ATTEMPTS", &v)?,
            None => file.stripe_max_attempts.unwrap_or(3),
        };
        let retry_base_ms = match num_env("GENESIS_BILLING_STRIPE_RETRY_BASE_MS") {
            Some(v) => parse_num("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", &v)?,
            None => file.stripe_retry_base_ms.unwrap_or(1000),
        };
        let default_rate = match key_mode {
            Some(StripeMode::Live) => 90,
            _ => 25,
        };
        let rate_limit = match num_env("GENESIS_BILLING_STRIPE_RATE_LIMIT") {
            Some(v) => parse_num("GENESIS_BILLING_STRIPE_RATE_LIMIT", &v)?,
            None => file.stripe_rate_limit.unwrap_or(default_rate),
        };
        if !(1..=10).contains(&max_attempts) {
            return Err(invalid(
                "GENESIS_BILLING_STRIPE_MAX_ATTEMPTS",
                "expected 1 to 10",
            ));
        }
        if !(1..=300).contains(&timeout_secs) {
            return Err(invalid(
                "GENESIS_BILLING_STRIPE_TIMEOUT_SECS",
                "expected 1 to 300",
            ));
        }

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

        let rollout_percent = match env.var("BILLING_ROLLOUT_PERCENT") {
            Some(v) => parse_num::<u8>("BILLING_ROLLOUT_PERCENT", &v)?,
            None => file.billing_rollout_percent.unwrap_or(100),
        };
        if rollout_percent > 100 {
            return Err(invalid("BILLING_ROLLOUT_PERCENT", "expected 0 to 100"));
        }

        let database_url = flags
            .database_url
            .clone()
            .or(file.database_url)
            .or_else(|| env.var("DATABASE_URL"))
            .unwrap_or_else(|| "sqlite://genesis-billing.db".to_owned());
        let database_url = DatabaseUrl::new(database_url);
        if !(database_url.expose().starts_with("sqlite:") || database_url.is_postgres()) {
            return Err(invalid(
                "DATABASE_URL",
                "expected sqlite://PATH or postgres://…",
            ));
        }

        let listen = flags
            .listen
            .clone()
            .or(file.listen)
            .or_else(|| env.var("GENESIS_BILLING_LISTEN"))
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen
            .parse()
            .map_err(|_| invalid("GENESIS_BILLING_LISTEN", "expected HOST:PORT"))?;

        let admin_tokens = secret_list(
            file.admin_tokens,
            "admin_tokens",
            env,
            "GENESIS_ADMIN_TOKEN",
            "admin token",
            MIN_ADMIN_TOKEN_LEN,
        )?;
        let webhook_secrets = secret_list(
            file.webhook_secrets,
            "webhook_secrets",
            env,
            "STRIPE_WEBHOOK_SECRET",
            "webhook secret",
            MIN_WEBHOOK_SECRET_LEN,
        )?;

        let db_max_connections = env_num(env, "GENESIS_BILLING_DB_MAX_CONNECTIONS", 16u32)?;
        if !(1..=1000).contains(&db_max_connections) {
            return Err(invalid(
                "GENESIS_BILLING_DB_MAX_CONNECTIONS",
                "expected 1 to 1000",
            ));
        }
        let db_statement_timeout_ms =
            env_num(env, "GENESIS_BILLING_DB_STATEMENT_TIMEOUT_MS", 30_000u64)?;
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
            catalog_path: flags
                .catalog
                .clone()
                .or(file.catalog)
                .or_else(|| env.var("GENESIS_BILLING_CATALOG").map(PathBuf::from)),
            listen,
            admin_tokens,
            webhook_secrets,
            webhook_tolerance_secs: env_num(env, "GENESIS_BILLING_WEBHOOK_TOLERANCE_SECS", 300)?,
            resume_interval_secs: env_num(env, "GENESIS_BILLING_RESUME_INTERVAL_SECS", 30)?,
            lease_secs: env_num(env, "GENESIS_BILLING_LEASE_SECS", 120)?,
            reconcile_interval_secs: env_num(env, "GENESIS_BILLING_RECONCILE_INTERVAL_SECS", 3600)?,
            gap_fill_interval_secs: env_num(env, "GENESIS_BILLING_GAP_FILL_INTERVAL_SECS", 300)?,
            public_url: file
                .public_url
                .or_else(|| env.var("GENESIS_BILLING_PUBLIC_URL"))
                .unwrap_or_else(|| "https://example.com".to_owned()),
        })
    }

    /// The database pool settings.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
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

/// `serve`'s limits: config file, then environment, then defaults; each within a sane range.
fn serve_settings(file: &FileConfig, env: &dyn Env) -> Result<ServeSettings, ConfigError> {
    fn bounded<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        from_file: Option<T>,
        env: &dyn Env,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        let v = match from_file {
            Some(v) => v,
            None => env_num(env, name, default)?,
        };
        if !range.contains(&v) {
            return Err(invalid(
                name,
                format!("expected {} to {}", range.start(), range.end()),
            ));
        }
        Ok(v)
    }
    let d = ServeSettings::default();
    let ops_listen = match file
        .ops_listen
        .clone()
        .or_else(|| env.var("GENESIS_BILLING_OPS_LISTEN"))
    {
        Some(v) if !v.trim().is_empty() => Some(
            v.trim()
                .parse()
                .map_err(|_| invalid("GENESIS_BILLING_OPS_LISTEN", "expected HOST:PORT"))?,
        ),
        _ => None,
    };
    let metrics_token = match &file.metrics_token {
        Some(t) => {
            let t = SecretString::from(t.trim().to_owned());
            if t.expose_secret().is_empty() {
                return Err(invalid("metrics_token", "is empty"));
            }
            Some(t)
        }
        None => secret_var(env, "GENESIS_BILLING_METRICS_TOKEN")?
            .map(|t| SecretString::from(t.expose_secret().trim().to_owned())),
    };
    Ok(ServeSettings {
        header_read_timeout_secs: bounded(
            file.header_read_timeout_secs,
            env,
            "GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS",
            d.header_read_timeout_secs,
            1..=300,
        )?,
        body_read_timeout_secs: bounded(
            file.body_read_timeout_secs,
            env,
            "GENESIS_BILLING_BODY_READ_TIMEOUT_SECS",
            d.body_read_timeout_secs,
            1..=3600,
        )?,
        max_connections: bounded(
            file.max_connections,
            env,
            "GENESIS_BILLING_MAX_CONNECTIONS",
            d.max_connections,
            1..=1_000_000,
        )?,
        max_in_flight_webhook: bounded(
            file.max_in_flight_webhook,
            env,
            "GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK",
            d.max_in_flight_webhook,
            1..=100_000,
        )?,
        max_in_flight_admin: bounded(
            file.max_in_flight_admin,
            env,
            "GENESIS_BILLING_MAX_IN_FLIGHT_ADMIN",
            d.max_in_flight_admin,
            1..=100_000,
        )?,
        max_in_flight_ops: bounded(
            file.max_in_flight_ops,
            env,
            "GENESIS_BILLING_MAX_IN_FLIGHT_OPS",
            d.max_in_flight_ops,
            1..=100_000,
        )?,
        shutdown_grace_secs: bounded(
            file.shutdown_grace_secs,
            env,
            "GENESIS_BILLING_SHUTDOWN_GRACE_SECS",
            d.shutdown_grace_secs,
            0..=3600,
        )?,
        ops_listen,
        metrics_token,
    })
}

fn env_num<T: std::str::FromStr>(env: &dyn Env, name: &str, default: T) -> Result<T, ConfigError> {
    env.var(name)
        .map(|v| parse_num(name, &v))
        .unwrap_or(Ok(default))
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

    #[test]
    fn a_database_url_hides_its_password() {
        let url = DatabaseUrl::new("postgres://billing:hunter2@db:5432/billing");
        assert_eq!(
            format!("{url:?}"),
            "DatabaseUrl(postgres://billing:***@db:5432/billing)"
        );
        assert_eq!(url.to_string(), "postgres://billing:***@db:5432/billing");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn a_database_url_hides_every_form_of_password() {
        for (raw, shown) in [
            // The last `@` before the host ends the user info.
            (
                "postgres://billing:PW@X@db/billing",
                "postgres://billing:***@db/billing",
            ),
            (
                "postgresql://billing:p%40ss%3Aw0rd@db:5432/billing",
                "postgresql://billing:***@db:5432/billing",
            ),
            (
                "postgres://billing@db/billing?password=hunter2&sslmode=require",
                "postgres://billing@db/billing?password=***&sslmode=require",
            ),
            (
                "postgres://db/billing?sslpassword=hunter2&user=billing",
                "postgres://db/billing?sslpassword=***&user=billing",
            ),
            (
                "postgres://billing:hunter2@db/billing?PASSWORD=hunter2",
                "postgres://billing:***@db/billing?PASSWORD=***",
            ),
            ("sqlite://genesis-billing.db", "sqlite://genesis-billing.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("postgres://billing:hunter2@[::1", "postgres://***"),
        ] {
            let url = DatabaseUrl::new(raw);
            assert_eq!(url.to_string(), shown, "{raw}");
            assert_eq!(format!("{url:?}"), format!("DatabaseUrl({shown})"));
            for secret in ["hunter2", "PW@X", "p%40ss", "p@ss"] {
                assert!(!url.to_string().contains(secret), "{raw}");
                assert!(!format!("{url:?}").contains(secret), "{raw}");
            }
        }
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
        ] {
            for (source, loaded) in each_source(dir.path(), file_key, var, value) {
                let s = loaded.unwrap_or_else(|e| panic!("{source}: {e}"));
                let list = if file_key == "admin_tokens" {
                    s.admin_tokens
                } else {
                    s.webhook_secrets
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
    fn serve_limits_have_safe_defaults_and_come_from_the_file_then_the_environment() {
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
        assert_eq!((s.max_in_flight_webhook, s.shutdown_grace_secs), (7, 3));
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
}
