//! Typed helpers for talking to a simulator started in-process on port 0, over real HTTP.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

pub const KEY: &str = "sk_test_simulator_key";

pub struct Sim {
    pub handle: SimHandle,
    pub client: reqwest::Client,
    pub base: String,
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_default().to_owned()
    }
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

fn encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Sim {
    /// A simulator with rate limiting off and no faults.
    pub async fn start() -> Sim {
        Sim::with(SimConfig {
            rate_limit_per_second: 0,
            ..SimConfig::default()
        })
        .await
    }

    pub async fn with(config: SimConfig) -> Sim {
        let handle = stripe_sim::start(config).await.expect("simulator starts");
        let base = handle.base_url();
        Sim {
            handle,
            client: reqwest::Client::new(),
            base,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        pairs: &[(&str, &str)],
        idem: Option<&str>,
    ) -> Resp {
        let form = encode(pairs);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = if method == reqwest::Method::POST || form.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{form}", self.base)
        };
        let mut req = self.client.request(method.clone(), url).bearer_auth(KEY);
        if method == reqwest::Method::POST {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form);
        }
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.expect("request completes");
        Self::read(r).await
    }

    pub async fn read(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Resp {
        self.send("POST", path, pairs, None).await
    }

    /// A POST with an `Idempotency-Key`.
    pub async fn post_keyed(&self, path: &str, pairs: &[(&str, &str)], key: &str) -> Resp {
        self.send("POST", path, pairs, Some(key)).await
    }

    pub async fn get(&self, path: &str, pairs: &[(&str, &str)]) -> Resp {
        self.send("GET", path, pairs, None).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, &[], None).await
    }

    /// POSTs JSON to a `/_sim` control.
    pub async fn sim(&self, path: &str, body: Value) -> Resp {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request completes");
        Self::read(r).await
    }

    /// Creates a product and a monthly price; returns the price id.
    pub async fn monthly_price(&self, amount: i64) -> String {
        let amount = amount.to_string();
        let r = self
            .post(
                "/v1/prices",
                &[
                    ("currency", "usd"),
                    ("unit_amount", &amount),
                    ("recurring[interval]", "month"),
                    ("product_data[name]", "Plan"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.id()
    }

    pub async fn customer(&self, extra: &[(&str, &str)]) -> String {
        let mut pairs = vec![("name", "Test business")];
        pairs.extend_from_slice(extra);
        let r = self.post("/v1/customers", &pairs).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.id()
    }

    /// A customer whose default payment method is the given test token.
    pub async fn customer_with_card(&self, token: &str) -> String {
        self.customer(&[
            ("payment_method", token),
            ("invoice_settings[default_payment_method]", token),
        ])
        .await
    }

    pub async fn subscribe(&self, customer: &str, price: &str, extra: &[(&str, &str)]) -> Resp {
        let mut pairs = vec![("customer", customer), ("items[0][price]", price)];
        pairs.extend_from_slice(extra);
        self.post("/v1/subscriptions", &pairs).await
    }

    pub async fn status_of(&self, sub: &str) -> String {
        let r = self.get(&format!("/v1/subscriptions/{sub}"), &[]).await;
        r.body["status"].as_str().unwrap_or_default().to_owned()
    }

    /// Event types recorded so far, oldest first.
    pub fn event_types(&self) -> Vec<String> {
        self.handle
            .objects("event")
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.handle
            .objects("event")
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }
}

/// Polls until `f` returns `Some`, or panics after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
