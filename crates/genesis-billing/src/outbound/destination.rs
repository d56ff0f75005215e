//! Where events go and how hard delivery tries: `GENESIS_DASHBOARD_*` and the event retention, validated
//! here (config.rs reads them in its one precedence and calls these checks). A problem is described, the
//! URL itself never echoed: it may carry a token in its path.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

/// Longest `GENESIS_DASHBOARD_URL` accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Delivery settings; without a URL nothing is pushed (events are still kept for `GET /v1/events`).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// The meta-agent's dashboard; `None` = push off.
    pub url: Option<DashboardUrl>,
    /// `GENESIS_DASHBOARD_ALLOW_HTTP`: plain http to a host that is not loopback was allowed.
    pub allow_http: bool,
    /// Signing secrets, one `v1` each; empty = no `Genesis-Signature` header.
    pub secrets: Vec<SecretString>,
    /// Connect plus total time of one POST.
    pub timeout: Duration,
    /// Longest wait between two attempts.
    pub backoff_cap: Duration,
    /// An event still failing this long after it was written is dead-lettered.
    pub give_up: Duration,
    /// Businesses delivered to at once.
    pub concurrency: usize,
    /// Events older than this are deleted, delivered or not.
    pub retention_days: u64,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            url: None,
            allow_http: false,
            secrets: Vec::new(),
            timeout: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(3600),
            give_up: Duration::from_secs(259_200),
            concurrency: 16,
            retention_days: 30,
        }
    }
}

impl OutboundSettings {
    /// How long events are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days.saturating_mul(86_400))
    }

    /// A claimed event's lease: one POST's timeout plus slack, so a SIGKILLed replica's events are taken
    /// over soon, and a live one never loses a lease while its POST can still be running.
    pub fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }
}

/// Why a `GENESIS_DASHBOARD_URL` is refused (the text never contains the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("contains whitespace or control characters")]
    Characters,
    #[error("is not an absolute URL (expected https://host[/path])")]
    NotAbsolute,
    #[error("must start with https:// (or http://)")]
    Scheme,
    #[error("must not contain a user name or password")]
    Userinfo,
    #[error("must not have a query (?…)")]
    Query,
    #[error("must not have a fragment (#…)")]
    Fragment,
    #[error("must name a host")]
    NoHost,
    #[error(
        "uses http:// to a host that is not loopback: events would travel unencrypted; use https:// \
         or set GENESIS_DASHBOARD_ALLOW_HTTP=true"
    )]
    PlainHttp,
}

/// A validated dashboard base URL. `Debug` and `Display` show only scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub struct DashboardUrl(url::Url);

impl DashboardUrl {
    /// Checks `raw`: absolute http(s), a host, no userinfo, query or fragment; `http://` only to a
    /// loopback host unless `allow_http`.
    pub fn parse(raw: &str, allow_http: bool) -> Result<Self, UrlProblem> {
        let raw = raw.trim();
        if raw.len() > MAX_URL_LEN {
            return Err(UrlProblem::TooLong);
        }
        // The parser silently drops tabs and newlines; refuse them instead of guessing.
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlProblem::Characters);
        }
        let url = url::Url::parse(raw).map_err(|_| UrlProblem::NotAbsolute)?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(UrlProblem::Scheme),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlProblem::Userinfo);
        }
        if url.query().is_some() {
            return Err(UrlProblem::Query);
        }
        if url.fragment().is_some() {
            return Err(UrlProblem::Fragment);
        }
        let loopback = match url.host() {
            None => return Err(UrlProblem::NoHost),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        };
        if !https && !loopback && !allow_http {
            return Err(UrlProblem::PlainHttp);
        }
        Ok(Self(url))
    }

    /// `{base}/api/businesses/{business_id}/events`, the id percent-encoded as one path segment; `None`
    /// for an id that cannot be one (empty, `.` or `..`, which URLs read as directories; business ids
    /// are never these).
    pub fn endpoint(&self, business_id: &str) -> Option<url::Url> {
        if matches!(business_id, "" | "." | "..") {
            return None;
        }
        let mut url = self.0.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(["api", "businesses", business_id, "events"]);
        Some(url)
    }

    /// Scheme, host and port only: what logs and `/health` may show.
    pub fn origin(&self) -> String {
        self.0.origin().ascii_serialization()
    }

    /// The URL as configured (normalised), for tests and the settings table.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for DashboardUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DashboardUrl({})", self.origin())
    }
}

impl fmt::Display for DashboardUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_foreign_or_credentialed_url_is_refused() {
        for (raw, problem) in [
            ("", UrlProblem::NotAbsolute),
            ("/api", UrlProblem::NotAbsolute),
            ("dashboard.example/api", UrlProblem::NotAbsolute),
            ("ftp://dashboard.example", UrlProblem::Scheme),
            ("file:///etc/passwd", UrlProblem::Scheme),
            ("javascript:alert(1)", UrlProblem::Scheme),
            ("https://user:SECRETPW@dash.example", UrlProblem::Userinfo),
            ("https://user@dash.example", UrlProblem::Userinfo),
            ("https://dash.example/?token=x", UrlProblem::Query),
            ("https://dash.example/#x", UrlProblem::Fragment),
            ("https://dash.example/a b", UrlProblem::Characters),
            ("https://dash.exa\nmple/", UrlProblem::Characters),
            ("https://dash.exa\tmple/", UrlProblem::Characters),
            ("https://dash.example/\u{0}", UrlProblem::Characters),
            ("http://10.0.0.1", UrlProblem::PlainHttp),
            ("http://dash.example:8080/x", UrlProblem::PlainHttp),
            ("http://[2001:db8::1]/", UrlProblem::PlainHttp),
            ("http://127.0.0.1.nip.io/", UrlProblem::PlainHttp),
        ] {
            assert_eq!(DashboardUrl::parse(raw, false), Err(problem), "{raw:?}");
        }
        let long = format!("https://dash.example/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(DashboardUrl::parse(&long, false), Err(UrlProblem::TooLong));
        // No message repeats what it refuses.
        for problem in [UrlProblem::Userinfo, UrlProblem::PlainHttp] {
            assert!(!problem.to_string().contains("SECRETPW"));
        }
    }

    #[test]
    fn http_is_allowed_to_loopback_or_when_explicitly_allowed() {
        for raw in [
            "http://127.0.0.1:9000",
            "http://127.8.9.10/",
            "http://localhost:1/",
            "http://LOCALHOST/",
            "http://[::1]:8080/x",
            "https://10.0.0.1",
            "https://dash.example/base/",
        ] {
            assert!(DashboardUrl::parse(raw, false).is_ok(), "{raw}");
        }
        assert!(DashboardUrl::parse("http://10.0.0.1", true).is_ok());
        assert!(DashboardUrl::parse("http://dash.internal:8080/x", true).is_ok());
    }

    #[test]
    fn the_endpoint_appends_the_route_and_encodes_the_business_id_as_one_segment() {
        let base = DashboardUrl::parse("https://dash.example", false).unwrap();
        assert_eq!(
            base.endpoint("biz_1").unwrap().as_str(),
            "https://dash.example/api/businesses/biz_1/events"
        );
        let prefixed = DashboardUrl::parse("https://dash.example/genesis/", false).unwrap();
        assert_eq!(
            prefixed.endpoint("a/b?c#d e%2e").unwrap().as_str(),
            "https://dash.example/genesis/api/businesses/a%2Fb%3Fc%23d%20e%252e/events"
        );
        let no_slash = DashboardUrl::parse("https://dash.example/genesis", false).unwrap();
        assert_eq!(
            no_slash.endpoint("b").unwrap().path(),
            "/genesis/api/businesses/b/events"
        );
        for dots in ["", ".", ".."] {
            assert_eq!(no_slash.endpoint(dots), None, "{dots:?}");
        }
    }

    #[test]
    fn debug_and_display_show_only_the_origin() {
        let url = DashboardUrl::parse("https://dash.example:8443/tok-SECRET/", false).unwrap();
        assert_eq!(url.origin(), "https://dash.example:8443");
        assert!(!format!("{url:?} {url}").contains("tok-SECRET"));
    }
}
