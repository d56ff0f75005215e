//! One POST of one event, and what its outcome means. Any 2xx is delivered; a timeout, a connection error,
//! 408, 429 and 5xx are worth another try; any other answer (other 4xx, and 3xx: redirects are not
//! followed, the URL is configured) is final. Only a short, sanitised excerpt of the answer is kept.

use std::time::Duration;

use crate::store::OutboundEvent;

use super::destination::{DashboardUrl, OutboundSettings};
use super::signature;

/// Longest excerpt of a receiver's answer kept in `last_error` (printable characters).
pub const EXCERPT_CHARS: usize = 200;
/// Bytes of a receiver's answer read at most: enough for the excerpt, never the whole of a large body.
const READ_LIMIT: usize = 2048;
/// First retry delay; doubled per attempt up to the cap.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Shortest retry delay, so full jitter never turns into a tight loop.
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Worth trying again; `retry_after` is the receiver's `Retry-After`, when it sent one.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused it for good.
    Dead { error: String },
}

/// The class of an HTTP status for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Delivered,
    Retry,
    Dead,
}

/// 2xx delivered; 408, 429 and 5xx retried; everything else (1xx, 3xx, other 4xx) dead.
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Delivered,
        408 | 429 | 500..=599 => Class::Retry,
        _ => Class::Dead,
    }
}

/// `HTTP <status>` and the start of the answer, printable ASCII only (anything else becomes `?`,
/// whitespace runs one space), at most [`EXCERPT_CHARS`] characters.
pub fn excerpt(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut space = false;
    for c in text.chars() {
        if out.chars().count() >= EXCERPT_CHARS {
            break;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(if c.is_ascii_graphic() { c } else { '?' });
    }
    let out: String = out.chars().take(EXCERPT_CHARS).collect();
    if out.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {out}")
    }
}

/// The wait before attempt `attempts + 1`: full jitter over `BACKOFF_BASE · 2^attempts` capped at `cap`
/// (`unit` is a uniform draw in [0, 1)), at least `BACKOFF_FLOOR`, and no sooner than `Retry-After`.
pub fn backoff(attempts: i64, cap: Duration, retry_after: Option<Duration>, unit: f64) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempts.clamp(0, 30) as u32);
    let ceiling = exp.min(cap);
    let jittered = ceiling
        .mul_f64(unit.clamp(0.0, 1.0))
        .max(BACKOFF_FLOOR.min(cap));
    match retry_after {
        Some(r) => jittered.max(r.min(cap)),
        None => jittered,
    }
}

/// `Retry-After` as delta-seconds (the HTTP-date form is ignored: our own backoff applies then).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Sends events to one dashboard.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    url: DashboardUrl,
    secrets: Vec<secrecy::SecretString>,
    timeout: Duration,
}

impl Deliverer {
    /// A client of its own (not the Stripe client's): no redirects, connect and total timeouts.
    pub fn new(settings: &OutboundSettings, url: DashboardUrl) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .timeout(settings.timeout)
            .user_agent(concat!("genesis-billing/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            url,
            secrets: settings.secrets.clone(),
            timeout: settings.timeout,
        })
    }

    /// POSTs `event`'s body once and classifies the answer.
    pub async fn deliver(&self, event: &OutboundEvent) -> Outcome {
        let Some(endpoint) = self.url.endpoint(&event.business_id) else {
            return Outcome::Dead {
                error: "the business id cannot be a URL path segment".to_owned(),
            };
        };
        let body = event.body();
        let mut request = self
            .client
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Genesis-Event-Id", &event.id);
        if let Some(sig) = signature::sign(&self.secrets, crate::store::now(), body.as_bytes()) {
            request = request.header(signature::HEADER, sig);
        }
        let mut response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    error: self.transport_error(&e),
                    retry_after: None,
                }
            }
        };
        let status = response.status().as_u16();
        let class = classify(status);
        let wait = retry_after(response.headers());
        // Only the start of the answer is read; the connection is dropped with the rest.
        let mut head = Vec::new();
        if class != Class::Delivered {
            while head.len() < READ_LIMIT {
                match response.chunk().await {
                    Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            head.truncate(READ_LIMIT);
        }
        match class {
            Class::Delivered => Outcome::Delivered,
            Class::Retry => Outcome::Retry {
                error: excerpt(status, &head),
                retry_after: wait,
            },
            Class::Dead => Outcome::Dead {
                error: excerpt(status, &head),
            },
        }
    }

    /// A fixed phrase for a failure without an answer (reqwest's own text names the URL).
    fn transport_error(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!("no answer within {} s", self.timeout.as_secs())
        } else if e.is_connect() {
            "connection failed".to_owned()
        } else {
            "request failed before an answer".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_delivered_retried_or_dead() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(s), Class::Delivered, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(s), Class::Retry, "{s}");
        }
        for s in [
            100, 301, 302, 304, 307, 308, 400, 401, 403, 404, 409, 410, 422, 451,
        ] {
            assert_eq!(classify(s), Class::Dead, "{s}");
        }
    }

    #[test]
    fn an_excerpt_is_short_printable_and_single_line() {
        assert_eq!(excerpt(503, b""), "HTTP 503");
        assert_eq!(
            excerpt(400, b"  bad\r\n\tinput \x1b[31m\xff\xfe "),
            "HTTP 400: bad input ?[31m??"
        );
        let long = excerpt(500, "é".repeat(10_000).as_bytes());
        assert_eq!(long, format!("HTTP 500: {}", "?".repeat(EXCERPT_CHARS)));
        let huge = excerpt(500, &vec![b'x'; 1 << 20]);
        assert!(huge.len() <= EXCERPT_CHARS + "HTTP 500: ".len());
    }

    #[test]
    fn backoff_doubles_from_half_a_second_with_jitter_up_to_the_cap_and_honours_retry_after() {
        let cap = Duration::from_secs(3600);
        assert_eq!(backoff(0, cap, None, 0.999_999).as_millis(), 499);
        assert_eq!(backoff(1, cap, None, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(3, cap, None, 0.5), Duration::from_secs(2));
        assert_eq!(
            backoff(0, cap, None, 0.0),
            BACKOFF_FLOOR,
            "never a tight loop"
        );
        assert!(backoff(40, cap, None, 0.999_999) <= cap);
        assert!(backoff(40, cap, None, 0.999_999) > Duration::from_secs(3599));
        assert_eq!(backoff(i64::MAX, cap, None, 1.0), cap);
        assert_eq!(backoff(-5, cap, None, 1.0), BACKOFF_BASE);
        let small = Duration::from_secs(1);
        assert_eq!(backoff(10, small, None, 1.0), small);
        assert_eq!(
            backoff(0, cap, Some(Duration::from_secs(30)), 0.1),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff(0, small, Some(Duration::from_secs(30)), 0.1),
            small,
            "Retry-After is capped too"
        );
        // Spread: different draws give different waits.
        assert_ne!(backoff(5, cap, None, 0.2), backoff(5, cap, None, 0.8));
    }
}
