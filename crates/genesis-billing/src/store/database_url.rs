//! A database URL, kept secret and shown only with its passwords masked.

use secrecy::{ExposeSecret, SecretString};

/// A database URL whose password never shows in `Debug` or `Display`.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// Wraps `url` as a secret.
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }
    /// The URL itself, passwords included: for connecting only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    /// Whether the URL names a PostgreSQL server.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
