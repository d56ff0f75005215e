//! In-memory object storage with Stripe-like ids, per-type indexes (by insertion, and by `created` for lists), and atomic persistence to a file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A new Stripe-like id: the prefix and random alphanumerics (14 for customers, 24 otherwise).
pub fn new_id(prefix: &str) -> String {
    let n = if prefix == "cus_" { 14 } else { 24 };
    let mut s = String::with_capacity(prefix.len() + n);
    s.push_str(prefix);
    s.extend(std::iter::repeat_with(fastrand::alphanumeric).take(n));
    s
}

/// One stored object: its wire JSON plus simulator-only data that is never rendered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Monotonic insertion number: the tiebreak that orders lists newest first.
    pub seq: u64,
    /// The object as Stripe would render it.
    pub value: Value,
    /// Simulator-only data (card behaviour, webhook secret, ...).
    #[serde(default)]
    pub internal: Value,
    /// The whole object as JSON text, for objects that never change but a few fields (events); `value` then
    /// holds only those fields, which win over the text's. A parsed object costs several times its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Box<str>>,
}

impl Entry {
    /// The object in wire shape.
    pub fn full(&self) -> Value {
        let Some(text) = &self.text else {
            return self.value.clone();
        };
        let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        if let (Value::Object(whole), Value::Object(fields)) = (&mut v, &self.value) {
            for (k, x) in fields {
                whole.insert(k.clone(), x.clone());
            }
        }
        v
    }
}

/// Where an object sits in its type's lists: `created`, then insertion number (lists run newest first).
pub type OrderKey = (i64, u64);

/// Every object, by id, with per-type indexes in insertion order and in list order.
#[derive(Debug, Default)]
pub struct Store {
    entries: HashMap<String, Entry>,
    by_type: HashMap<String, Vec<(u64, String)>>,
    // `created` is set once at insertion, so the key never goes stale. Objects of a test-clock customer carry the
    // clock's time, which insertion order alone would list out of order.
    by_created: HashMap<String, BTreeMap<OrderKey, String>>,
    next_seq: u64,
}

fn order_key(e: &Entry) -> OrderKey {
    (e.value["created"].as_i64().unwrap_or(0), e.seq)
}

impl Store {
    /// Inserts a new object; its type is its `object` field.
    pub fn insert(&mut self, value: Value) {
        self.insert_with(value, Value::Null);
    }

    /// Inserts a new object with simulator-only data.
    pub fn insert_with(&mut self, value: Value, internal: Value) {
        self.insert_entry(value, internal, None);
    }

    /// Inserts an object kept as its JSON text, with `fields` (what lists filter on and later changes touch) parsed.
    pub fn insert_text(&mut self, fields: Value, text: String) {
        self.insert_entry(fields, Value::Null, Some(text.into_boxed_str()));
    }

    fn insert_entry(&mut self, value: Value, internal: Value, text: Option<Box<str>>) {
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        let kind = value["object"].as_str().unwrap_or_default().to_owned();
        self.next_seq += 1;
        let seq = self.next_seq;
        let entry = Entry {
            seq,
            value,
            internal,
            text,
        };
        self.by_created
            .entry(kind.clone())
            .or_default()
            .insert(order_key(&entry), id.clone());
        self.by_type
            .entry(kind)
            .or_default()
            .push((seq, id.clone()));
        self.entries.insert(id, entry);
    }

    /// An object in wire shape, whole (an object kept as text is parsed).
    pub fn full(&self, id: &str) -> Option<Value> {
        self.entries.get(id).map(Entry::full)
    }

    /// An object's wire JSON (for an object kept as text, only the fields kept parsed).
    pub fn get(&self, id: &str) -> Option<&Value> {
        self.entries.get(id).map(|e| &e.value)
    }

    /// An object's wire JSON, for a change.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.entries.get_mut(id).map(|e| &mut e.value)
    }

    /// An object of a given type (`None` for another type's id, as Stripe answers 404 for a wrong prefix).
    pub fn get_typed(&self, kind: &str, id: &str) -> Option<&Value> {
        self.get(id).filter(|v| v["object"] == kind)
    }

    /// The whole entry, with simulator-only data.
    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The whole entry, for a change.
    pub fn entry_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.get_mut(id)
    }

    /// Removes an object entirely (products, webhook endpoints and test clocks are really deleted).
    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(kind) = entry.value["object"].as_str() {
            if let Some(v) = self.by_type.get_mut(kind) {
                if let Ok(i) = v.binary_search_by_key(&entry.seq, |(s, _)| *s) {
                    v.remove(i);
                }
            }
            if let Some(m) = self.by_created.get_mut(kind) {
                m.remove(&order_key(&entry));
            }
        }
        Some(entry)
    }

    /// Where an object sits in its type's lists.
    pub fn order_of(&self, id: &str) -> Option<OrderKey> {
        self.entries.get(id).map(order_key)
    }

    /// Ids of one type in list order (oldest `created` first, then by insertion); lists read it backwards.
    pub fn by_created(&self, kind: &str) -> Option<&BTreeMap<OrderKey, String>> {
        self.by_created.get(kind)
    }

    /// Ids of one type, oldest first, with their insertion numbers.
    pub fn ids(&self, kind: &str) -> &[(u64, String)] {
        self.by_type.get(kind).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every object of a type, oldest first.
    pub fn values(&self, kind: &str) -> impl DoubleEndedIterator<Item = &Value> {
        self.ids(kind).iter().filter_map(|(_, id)| self.get(id))
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries ordered by insertion, for persistence.
    pub fn snapshot(&self) -> Vec<(&String, &Entry)> {
        let mut v: Vec<_> = self.entries.iter().collect();
        v.sort_by_key(|(_, e)| e.seq);
        v
    }

    /// Rebuilds a store from persisted entries.
    pub fn restore(entries: Vec<Entry>) -> Store {
        let mut store = Store::default();
        for e in entries {
            let id = e.value["id"].as_str().unwrap_or_default().to_owned();
            let kind = e.value["object"].as_str().unwrap_or_default().to_owned();
            store.next_seq = store.next_seq.max(e.seq);
            store
                .by_created
                .entry(kind.clone())
                .or_default()
                .insert(order_key(&e), id.clone());
            store
                .by_type
                .entry(kind)
                .or_default()
                .push((e.seq, id.clone()));
            store.entries.insert(id, e);
        }
        for v in store.by_type.values_mut() {
            v.sort();
        }
        store
    }
}

/// Writes bytes to a file atomically: a temporary file in the same directory, then a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("while writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("while renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_kept_as_text_renders_whole_with_its_changed_fields() {
        let mut store = Store::default();
        let whole = json!({ "id": "evt_1", "object": "event", "created": 5, "pending_webhooks": 2, "data": { "object": { "id": "cus_1" } } });
        let fields =
            json!({ "id": "evt_1", "object": "event", "created": 5, "pending_webhooks": 2 });
        store.insert_text(fields, whole.to_string());
        store.get_mut("evt_1").unwrap()["pending_webhooks"] = json!(1);
        let mut expected = whole;
        expected["pending_webhooks"] = json!(1);
        assert_eq!(store.full("evt_1").unwrap(), expected);
        assert_eq!(store.get("evt_1").unwrap()["data"], Value::Null);
        assert_eq!(store.by_created("event").unwrap().len(), 1);
    }

    #[test]
    fn an_object_kept_as_text_survives_a_persisted_round_trip() {
        let mut store = Store::default();
        let whole =
            json!({ "id": "evt_1", "object": "event", "created": 5, "type": "customer.created" });
        store.insert_text(
            json!({ "id": "evt_1", "object": "event", "created": 5 }),
            whole.to_string(),
        );
        let saved = serde_json::to_string(
            &store
                .snapshot()
                .into_iter()
                .map(|(_, e)| e)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let restored = Store::restore(serde_json::from_str(&saved).unwrap());
        assert_eq!(restored.full("evt_1").unwrap(), whole);
    }
}
