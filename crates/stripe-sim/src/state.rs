//! The simulator's whole mutable state behind one lock: objects, simulated time, settings, idempotency records, and the outbox of events awaiting webhook delivery.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock::wall_now;
use crate::idempotency::Idempotency;
use crate::store::{new_id, Entry, Store};

/// The API version whose object shapes the simulator renders.
pub const API_VERSION: &str = "2026-09-30.endive";

/// Billing behaviour an account configures in Stripe's dashboard, set here through `/_sim/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// What happens to a subscription when the payment retries run out: `cancel` (default), `unpaid` or `past_due`.
    pub dunning: String,
    /// When failed renewal payments are retried, in days after the first failure.
    pub retry_days: Vec<i64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dunning: "cancel".into(),
            retry_days: vec![1, 3, 7],
        }
    }
}

/// A webhook endpoint an event must be delivered to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `we_…` id.
    pub endpoint_id: String,
    /// Where to POST.
    pub url: String,
    /// The `whsec_…` signing secret.
    pub secret: String,
}

/// An event waiting to be handed to the webhook deliverer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `evt_…` id.
    pub event_id: String,
    /// The exact JSON body to send (signatures are over these bytes).
    pub body: Arc<String>,
    /// Endpoints subscribed to the event's type.
    pub targets: Vec<Target>,
}

/// The request being handled, recorded on the events it causes.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// `req_…` id.
    pub id: String,
    /// The `Idempotency-Key` header, when sent.
    pub idempotency_key: Option<String>,
}

/// Everything the simulator knows.
#[derive(Debug)]
pub struct State {
    /// Stored objects.
    pub store: Store,
    /// Seconds added to the wall clock for objects not on a test clock (`/_sim/clock/advance`).
    pub time_offset: i64,
    /// Dunning settings.
    pub settings: Settings,
    /// Idempotency records.
    pub idempotency: Idempotency,
    /// Events awaiting delivery.
    pub outbox: Vec<Outgoing>,
    /// The request in progress, if any (automatic transitions have none).
    pub request: Option<RequestInfo>,
    /// `http://127.0.0.1:PORT`, for checkout URLs.
    pub base_url: String,
    /// Set by every change, cleared by the persister.
    pub dirty: bool,
}

impl State {
    /// An empty state.
    pub fn new(base_url: String) -> Self {
        State {
            store: Store::default(),
            time_offset: 0,
            settings: Settings::default(),
            idempotency: Idempotency::default(),
            outbox: Vec::new(),
            request: None,
            base_url,
            dirty: false,
        }
    }

    /// Simulated now for objects not attached to a test clock.
    pub fn global_now(&self) -> i64 {
        wall_now() + self.time_offset
    }

    /// Simulated now for a test clock (or the global time).
    pub fn now_for_clock(&self, clock: Option<&str>) -> i64 {
        clock
            .and_then(|c| self.store.get(c))
            .and_then(|c| c["frozen_time"].as_i64())
            .unwrap_or_else(|| self.global_now())
    }

    /// The test clock a customer is attached to.
    pub fn customer_clock(&self, customer: &str) -> Option<String> {
        self.store
            .get(customer)
            .and_then(|c| c["test_clock"].as_str())
            .map(str::to_owned)
    }

    /// Simulated now as seen by a customer.
    pub fn now_for_customer(&self, customer: &str) -> i64 {
        let clock = self.customer_clock(customer);
        self.now_for_clock(clock.as_deref())
    }

    /// Records an event and queues it for every endpoint subscribed to its type.
    pub fn emit(&mut self, kind: &str, object: Value, previous: Option<Value>, created: i64) {
        self.dirty = true;
        let targets: Vec<Target> = self
            .store
            .ids("webhook_endpoint")
            .iter()
            .filter_map(|(_, id)| self.store.entry(id))
            .filter(|e| e.value["status"] == "enabled")
            .filter(|e| {
                e.value["enabled_events"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|t| t == "*" || t == kind))
            })
            .map(|e| Target {
                endpoint_id: e.value["id"].as_str().unwrap_or_default().to_owned(),
                url: e.value["url"].as_str().unwrap_or_default().to_owned(),
                secret: e.internal["secret"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        let mut data = Map::new();
        data.insert("object".into(), object);
        if let Some(p) = previous {
            data.insert("previous_attributes".into(), p);
        }
        let request = match &self.request {
            Some(r) => json!({ "id": r.id, "idempotency_key": r.idempotency_key }),
            None => json!({ "id": null, "idempotency_key": null }),
        };
        let id = new_id("evt_");
        let event = json!({
            "id": id,
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": Value::Object(data),
            "livemode": false,
            "pending_webhooks": targets.len(),
            "request": request,
            "type": kind,
        });
        let text = serde_json::to_string(&event).unwrap_or_default();
        if !targets.is_empty() {
            self.outbox.push(Outgoing {
                event_id: id.clone(),
                body: Arc::new(text.clone()),
                targets,
            });
        }
        // Events never change but for `pending_webhooks`: kept as text, they take a fraction of the memory.
        let fields = json!({
            "id": id,
            "object": "event",
            "created": created,
            "pending_webhooks": event["pending_webhooks"],
            "type": kind,
        });
        self.store.insert_text(fields, text);
    }

    /// Serialises everything worth keeping across a restart.
    pub fn to_persisted(&self) -> anyhow::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            time_offset: i64,
            settings: &'a Settings,
            entries: Vec<&'a Entry>,
            idempotency: &'a Idempotency,
        }
        let out = Out {
            version: 1,
            time_offset: self.time_offset,
            settings: &self.settings,
            entries: self.store.snapshot().into_iter().map(|(_, e)| e).collect(),
            idempotency: &self.idempotency,
        };
        Ok(serde_json::to_vec(&out)?)
    }

    /// Restores state saved by [`State::to_persisted`].
    pub fn load_persisted(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct In {
            time_offset: i64,
            #[serde(default)]
            settings: Settings,
            entries: Vec<Entry>,
            #[serde(default)]
            idempotency: Idempotency,
        }
        let input: In = serde_json::from_slice(bytes)?;
        self.time_offset = input.time_offset;
        self.settings = input.settings;
        self.store = Store::restore(input.entries);
        self.idempotency = input.idempotency;
        Ok(())
    }
}

/// The attributes of `old` that differ in `new`, with their old values: Stripe's `previous_attributes`.
pub fn previous_attributes(old: &Value, new: &Value) -> Option<Value> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return None;
    };
    let mut prev = Map::new();
    for (k, ov) in o {
        if n.get(k) != Some(ov) {
            prev.insert(k.clone(), ov.clone());
        }
    }
    for k in n.keys() {
        if !o.contains_key(k) {
            prev.insert(k.clone(), Value::Null);
        }
    }
    (!prev.is_empty()).then_some(Value::Object(prev))
}
