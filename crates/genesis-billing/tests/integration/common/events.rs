//! Helpers for the stream of events to the meta-agent: the outbox as the store has it, the pull API's pages,
//! and waiting until the simulator's webhooks are all applied.

use std::time::Duration;

use genesis_billing::store::{OutboundEvent, OutboundFilter, Store};
use serde_json::Value;

use super::{eventually, App, World};

/// The outbox's events (of one business, or all), in commit order, read a page at a time as a consumer would.
pub async fn outbox_of(store: &Store, business: Option<&str>) -> Vec<OutboundEvent> {
    let mut all = Vec::new();
    let mut filter = OutboundFilter {
        business_id: business.map(str::to_owned),
        limit: 100,
        ..OutboundFilter::default()
    };
    loop {
        let page = store.list_outbound(&filter).await.unwrap();
        let Some(last) = page.last() else {
            return all;
        };
        filter.after = Some(last.cursor());
        all.extend(page);
    }
}

impl World {
    /// Every event in the outbox, in commit order.
    pub async fn outbox(&self) -> Vec<OutboundEvent> {
        outbox_of(self.service.store(), None).await
    }

    /// Waits until every event the simulator emitted of a type we handle is stored and finished (a failed
    /// one is retried, so it is not finished), so no change (and no outbound event) is still on its way.
    pub async fn wait_webhooks_applied(&self) {
        eventually(
            "every emitted webhook event to be applied",
            Duration::from_secs(20),
            || async {
                let stored: std::collections::HashMap<String, String> = self
                    .service
                    .store()
                    .list_events(None, 10_000)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.event_id, e.status))
                    .collect();
                self.objects("event")
                    .iter()
                    .filter(|e| {
                        genesis_billing::billing::HANDLED_EVENTS
                            .contains(&e["type"].as_str().unwrap_or(""))
                    })
                    .all(|e| {
                        stored
                            .get(e["id"].as_str().unwrap_or(""))
                            .is_some_and(|s| ["applied", "ignored", "dead"].contains(&s.as_str()))
                    })
            },
        )
        .await;
    }
}

impl App {
    /// `GET /v1/events` with a raw query string (`""` for none): status, raw body, body as JSON.
    pub async fn events_raw(&self, query: &str) -> (u16, String, Value) {
        let path = if query.is_empty() {
            "/v1/events".to_owned()
        } else {
            format!("/v1/events?{query}")
        };
        let r = self
            .admin(reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, text, json)
    }

    /// Every event through the pull API in pages of `limit` from `after`: the envelopes and the cursor the
    /// last (empty) page returned.
    pub async fn pull_all(
        &self,
        limit: usize,
        after: Option<&str>,
        business: Option<&str>,
    ) -> (Vec<Value>, String) {
        let mut cursor = after.map(str::to_owned);
        let mut all = Vec::new();
        loop {
            let mut q = vec![format!("limit={limit}")];
            if let Some(c) = &cursor {
                q.push(format!("after={c}"));
            }
            if let Some(b) = business {
                q.push(format!("business_id={b}"));
            }
            let (status, text, page) = self.events_raw(&q.join("&")).await;
            assert_eq!(status, 200, "{text}");
            let data = page["data"].as_array().unwrap().clone();
            assert!(data.len() <= limit, "a page is at most `limit` long");
            let next = page["next_cursor"].as_str().unwrap().to_owned();
            if data.is_empty() {
                if let Some(c) = &cursor {
                    assert_eq!(&next, c, "an empty page keeps the poller's place");
                }
                return (all, next);
            }
            all.extend(data);
            cursor = Some(next);
        }
    }
}
