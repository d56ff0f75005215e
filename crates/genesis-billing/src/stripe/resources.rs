//! Typed views of the few Stripe objects and calls genesis-billing uses. Only the fields we read are
//! typed, tolerantly; the raw JSON is kept alongside.

use std::collections::BTreeMap;

use serde_json::Value;

use super::client::{Call, StripeClient};
use super::error::StripeError;
use super::form::Form;

/// The id of a field that may be a bare id or an expanded object.
pub fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

pub(super) fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

pub(super) fn metadata(v: &Value) -> BTreeMap<String, String> {
    v.get("metadata")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn need_id(v: &Value) -> Result<String, StripeError> {
    str_field(v, "id").ok_or_else(|| StripeError::Decode("object without an id".into()))
}

/// A Stripe Customer.
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub deleted: bool,
    pub metadata: BTreeMap<String, String>,
    pub raw: Value,
}

impl Customer {
    pub fn from_json(raw: Value) -> Result<Self, StripeError> {
        Ok(Self {
            id: need_id(&raw)?,
            deleted: raw.get("deleted").and_then(Value::as_bool).unwrap_or(false),
            metadata: metadata(&raw),
            raw,
        })
    }
}

/// A Stripe Subscription at endive (periods live on items).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub status: String,
    pub customer: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub latest_invoice: Option<String>,
    pub price_id: Option<String>,
    pub default_payment_method: Option<String>,
    pub created: i64,
    pub raw: Value,
}

impl Subscription {
    pub fn from_json(raw: Value) -> Result<Self, StripeError> {
        let first_item = &raw["items"]["data"][0];
        Ok(Self {
            id: need_id(&raw)?,
            status: str_field(&raw, "status")
                .ok_or_else(|| StripeError::Decode("subscription without a status".into()))?,
            customer: id_of(&raw["customer"]),
            metadata: metadata(&raw),
            latest_invoice: id_of(&raw["latest_invoice"]),
            price_id: id_of(&first_item["price"]),
            default_payment_method: id_of(&raw["default_payment_method"]),
            created: raw["created"].as_i64().unwrap_or(0),
            raw,
        })
    }
}

/// A Stripe Price.
#[derive(Debug, Clone)]
pub struct Price {
    pub id: String,
    pub lookup_key: Option<String>,
    pub active: bool,
    pub unit_amount: Option<i64>,
    pub currency: String,
    pub interval: Option<String>,
    pub interval_count: i64,
    /// The Product it prices (an id, or an expanded product's id).
    pub product: Option<String>,
}

impl Price {
    pub fn from_json(raw: &Value) -> Result<Self, StripeError> {
        Ok(Self {
            id: need_id(raw)?,
            lookup_key: str_field(raw, "lookup_key"),
            active: raw["active"].as_bool().unwrap_or(false),
            unit_amount: raw["unit_amount"].as_i64(),
            currency: str_field(raw, "currency").unwrap_or_default(),
            interval: raw["recurring"]["interval"].as_str().map(str::to_owned),
            interval_count: raw["recurring"]["interval_count"].as_i64().unwrap_or(1),
            product: id_of(&raw["product"]),
        })
    }
}

/// A Stripe Checkout Session.
#[derive(Debug, Clone)]
pub struct CheckoutSession {
    pub id: String,
    pub url: Option<String>,
    pub status: Option<String>,
    pub customer: Option<String>,
    pub setup_intent: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub raw: Value,
}

impl CheckoutSession {
    pub fn from_json(raw: Value) -> Result<Self, StripeError> {
        Ok(Self {
            id: need_id(&raw)?,
            url: str_field(&raw, "url"),
            status: str_field(&raw, "status"),
            customer: id_of(&raw["customer"]),
            setup_intent: id_of(&raw["setup_intent"]),
            metadata: metadata(&raw),
            raw,
        })
    }
}

/// One page of a Stripe list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

pub(super) fn page<T>(
    raw: Value,
    parse: impl Fn(Value) -> Result<T, StripeError>,
) -> Result<Page<T>, StripeError> {
    let has_more = raw["has_more"].as_bool().unwrap_or(false);
    let data = match raw.get("data") {
        Some(Value::Array(items)) => items
            .clone()
            .into_iter()
            .map(parse)
            .collect::<Result<_, _>>()?,
        _ => return Err(StripeError::Decode("list without data".into())),
    };
    Ok(Page { data, has_more })
}

/// A created webhook endpoint: its id and its signing secret.
#[derive(Debug)]
pub struct WebhookEndpoint {
    pub id: String,
    pub secret: secrecy::SecretString,
}

/// Parameters of a new customer (SPEC §1.1 step 2).
#[derive(Debug, Clone)]
pub struct NewCustomer<'a> {
    pub name: &'a str,
    pub email: Option<&'a str>,
    pub description: &'a str,
    pub metadata: Vec<(&'a str, String)>,
}

/// Parameters of a new subscription (SPEC §1.1 step 3).
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    pub customer: &'a str,
    pub price: &'a str,
    pub metadata: Vec<(&'a str, String)>,
    pub trial_days: u32,
    pub missing_payment_method: &'a str,
    /// Charge this payment method at once, without a trial (a replacement after payment collection).
    pub default_payment_method: Option<&'a str>,
}

/// Parameters of a new Checkout Session in setup mode (SPEC §1.2).
#[derive(Debug, Clone)]
pub struct NewSetupCheckout<'a> {
    pub customer: &'a str,
    pub currency: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    pub metadata: Vec<(&'a str, String)>,
}

impl StripeClient {
    pub async fn create_customer(
        &self,
        c: &NewCustomer<'_>,
        key: String,
    ) -> Result<Customer, StripeError> {
        let form = Form::new()
            .add("name", c.name)
            .add_opt("email", c.email)
            .add("description", c.description)
            .add_map("metadata", c.metadata.iter().map(|(k, v)| (*k, v.as_str())));
        Customer::from_json(
            self.send(&Call::post(
                "customer.create",
                "/v1/customers",
                form,
                Some(key),
            ))
            .await?,
        )
    }

    /// Customers whose metadata `key` equals `value` (Stripe's search; not read-after-write consistent).
    pub async fn search_customers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<Customer>, StripeError> {
        let query = format!("metadata['{key}']:'{}'", value.replace('\'', "\\'"));
        let raw = self
            .send(&Call::get(
                "customer.search",
                "/v1/customers/search",
                Form::new().add("query", query).add("limit", "100"),
            ))
            .await?;
        Ok(page(raw, Customer::from_json)?.data)
    }

    pub async fn retrieve_customer(&self, id: &str) -> Result<Customer, StripeError> {
        let path = format!("/v1/customers/{id}");
        Customer::from_json(
            self.send(&Call::get("customer.retrieve", &path, Form::new()))
                .await?,
        )
    }

    pub async fn delete_customer(&self, id: &str) -> Result<(), StripeError> {
        let path = format!("/v1/customers/{id}");
        self.send(&Call::delete("customer.delete", &path))
            .await
            .map(drop)
    }

    pub async fn set_customer_default_payment_method(
        &self,
        id: &str,
        pm: &str,
        key: String,
    ) -> Result<(), StripeError> {
        let path = format!("/v1/customers/{id}");
        let form = Form::new().add("invoice_settings[default_payment_method]", pm);
        self.send(&Call::post("customer.update", &path, form, Some(key)))
            .await
            .map(drop)
    }

    pub async fn create_subscription(
        &self,
        s: &NewSubscription<'_>,
        key: String,
    ) -> Result<Subscription, StripeError> {
        let mut form = Form::new()
            .add("customer", s.customer)
            .add("items[0][price]", s.price)
            .add(
                "payment_settings[save_default_payment_method]",
                "on_subscription",
            )
            .add_map("metadata", s.metadata.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(pm) = s.default_payment_method {
            // A replacement with a card at hand: charge at once (no second trial), and keep the
            // subscription incomplete if the charge fails.
            form = form
                .add("default_payment_method", pm)
                .add("payment_behavior", "allow_incomplete");
        } else if s.trial_days > 0 {
            form = form.add("trial_period_days", s.trial_days.to_string()).add(
                "trial_settings[end_behavior][missing_payment_method]",
                s.missing_payment_method,
            );
        } else {
            form = form.add("payment_behavior", "default_incomplete");
        }
        Subscription::from_json(
            self.send(&Call::post(
                "subscription.create",
                "/v1/subscriptions",
                form,
                Some(key),
            ))
            .await?,
        )
    }

    pub async fn retrieve_subscription(&self, id: &str) -> Result<Subscription, StripeError> {
        let path = format!("/v1/subscriptions/{id}");
        Subscription::from_json(
            self.send(&Call::get("subscription.retrieve", &path, Form::new()))
                .await?,
        )
    }

    /// One page of events of `types` created at or after `created_gte`, kept as Stripe sent them (they
    /// are stored verbatim). A response without `data` reads as an empty last page.
    pub async fn list_events(
        &self,
        created_gte: i64,
        types: &[&str],
        starting_after: Option<&str>,
    ) -> Result<Page<Value>, StripeError> {
        let query = Form::new()
            .add("created[gte]", created_gte.to_string())
            .add("limit", "100")
            .add_list("types", types.iter().copied())
            .add_opt("starting_after", starting_after);
        let raw = self
            .send(&Call::get("event.list", "/v1/events", query))
            .await?;
        Ok(Page {
            has_more: raw["has_more"].as_bool().unwrap_or(false),
            data: raw["data"].as_array().cloned().unwrap_or_default(),
        })
    }

    /// Creates a webhook endpoint for `events` at `url`, pinned to our API version; idempotent on `key`.
    /// The signing secret, which Stripe shows only here, is wrapped at once.
    pub async fn create_webhook_endpoint(
        &self,
        url: &str,
        events: &[&str],
        key: String,
    ) -> Result<WebhookEndpoint, StripeError> {
        let form = Form::new()
            .add("url", url)
            .add_list("enabled_events", events.iter().copied())
            .add("api_version", super::client::STRIPE_VERSION);
        let endpoint = self
            .send(&Call::post(
                "webhook_endpoint.create",
                "/v1/webhook_endpoints",
                form,
                Some(key),
            ))
            .await?;
        Ok(WebhookEndpoint {
            id: endpoint["id"].as_str().unwrap_or_default().to_owned(),
            secret: secrecy::SecretString::from(
                endpoint["secret"].as_str().unwrap_or_default().to_owned(),
            ),
        })
    }

    /// One page of subscriptions, all statuses, optionally for one customer.
    pub async fn list_subscriptions(
        &self,
        customer: Option<&str>,
        starting_after: Option<&str>,
    ) -> Result<Page<Subscription>, StripeError> {
        let query = Form::new()
            .add("status", "all")
            .add("limit", "100")
            .add_opt("customer", customer)
            .add_opt("starting_after", starting_after);
        page(
            self.send(&Call::get("subscription.list", "/v1/subscriptions", query))
                .await?,
            Subscription::from_json,
        )
    }

    /// One page of customers (Stripe lists only customers that are not deleted).
    pub async fn list_customers(
        &self,
        starting_after: Option<&str>,
    ) -> Result<Page<Customer>, StripeError> {
        let query = Form::new()
            .add("limit", "100")
            .add_opt("starting_after", starting_after);
        page(
            self.send(&Call::get("customer.list", "/v1/customers", query))
                .await?,
            Customer::from_json,
        )
    }

    /// Sets metadata keys on a subscription (other keys are kept).
    pub async fn set_subscription_metadata(
        &self,
        id: &str,
        metadata: &[(&str, &str)],
        key: String,
    ) -> Result<(), StripeError> {
        let path = format!("/v1/subscriptions/{id}");
        let form = Form::new().add_map("metadata", metadata.iter().copied());
        self.send(&Call::post("subscription.update", &path, form, Some(key)))
            .await
            .map(drop)
    }

    /// Cancels immediately (DELETE), not at period end.
    pub async fn cancel_subscription(&self, id: &str) -> Result<Subscription, StripeError> {
        let path = format!("/v1/subscriptions/{id}");
        Subscription::from_json(
            self.send(&Call::delete("subscription.cancel", &path))
                .await?,
        )
    }

    pub async fn set_subscription_default_payment_method(
        &self,
        id: &str,
        pm: &str,
        key: String,
    ) -> Result<(), StripeError> {
        let path = format!("/v1/subscriptions/{id}");
        let form = Form::new().add("default_payment_method", pm);
        self.send(&Call::post("subscription.update", &path, form, Some(key)))
            .await
            .map(drop)
    }

    pub async fn retrieve_invoice(&self, id: &str) -> Result<Value, StripeError> {
        let path = format!("/v1/invoices/{id}");
        self.send(&Call::get("invoice.retrieve", &path, Form::new()))
            .await
    }

    pub async fn pay_invoice(&self, id: &str, pm: &str, key: String) -> Result<Value, StripeError> {
        let path = format!("/v1/invoices/{id}/pay");
        self.send(&Call::post(
            "invoice.pay",
            &path,
            Form::new().add("payment_method", pm),
            Some(key),
        ))
        .await
    }

    pub async fn cancel_payment_intent(&self, id: &str, key: String) -> Result<Value, StripeError> {
        let path = format!("/v1/payment_intents/{id}/cancel");
        let form = Form::new().add("cancellation_reason", "abandoned");
        self.send(&Call::post("payment_intent.cancel", &path, form, Some(key)))
            .await
    }

    /// Active prices with these lookup keys (Stripe takes at most 10 per request).
    pub async fn prices_by_lookup_keys(&self, keys: &[&str]) -> Result<Vec<Price>, StripeError> {
        let mut prices = Vec::new();
        for chunk in keys.chunks(10) {
            let query = Form::new()
                .add_list("lookup_keys", chunk.iter().copied())
                .add("active", "true")
                .add("limit", "100");
            let raw = self
                .send(&Call::get("price.list", "/v1/prices", query))
                .await?;
            prices.extend(page(raw, |v| Price::from_json(&v))?.data);
        }
        Ok(prices)
    }

    pub async fn create_product(
        &self,
        name: &str,
        metadata: &[(&str, &str)],
        key: String,
    ) -> Result<String, StripeError> {
        let form = Form::new()
            .add("name", name)
            .add_map("metadata", metadata.iter().copied());
        need_id(
            &self
                .send(&Call::post(
                    "product.create",
                    "/v1/products",
                    form,
                    Some(key),
                ))
                .await?,
        )
    }

    /// Creates a recurring price; `transfer_lookup_key` moves the key from an older price atomically.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_price(
        &self,
        product: &str,
        unit_amount: i64,
        currency: &str,
        interval: &str,
        lookup_key: &str,
        transfer_lookup_key: bool,
        key: String,
    ) -> Result<Price, StripeError> {
        let mut form = Form::new()
            .add("product", product)
            .add("unit_amount", unit_amount.to_string())
            .add("currency", currency)
            .add("recurring[interval]", interval)
            .add("lookup_key", lookup_key);
        if transfer_lookup_key {
            form = form.add("transfer_lookup_key", "true");
        }
        Price::from_json(
            &self
                .send(&Call::post("price.create", "/v1/prices", form, Some(key)))
                .await?,
        )
    }

    pub async fn create_setup_checkout(
        &self,
        c: &NewSetupCheckout<'_>,
        key: String,
    ) -> Result<CheckoutSession, StripeError> {
        let form = Form::new()
            .add("mode", "setup")
            .add("customer", c.customer)
            .add("currency", c.currency)
            .add("success_url", c.success_url)
            .add("cancel_url", c.cancel_url)
            .add_map("metadata", c.metadata.iter().map(|(k, v)| (*k, v.as_str())));
        CheckoutSession::from_json(
            self.send(&Call::post(
                "checkout.create",
                "/v1/checkout/sessions",
                form,
                Some(key),
            ))
            .await?,
        )
    }

    pub async fn retrieve_checkout_session(
        &self,
        id: &str,
    ) -> Result<CheckoutSession, StripeError> {
        let path = format!("/v1/checkout/sessions/{id}");
        CheckoutSession::from_json(
            self.send(&Call::get("checkout.retrieve", &path, Form::new()))
                .await?,
        )
    }

    /// The payment method a setup-mode session collected (read from its SetupIntent).
    pub async fn setup_intent_payment_method(
        &self,
        setup_intent: &str,
    ) -> Result<Option<String>, StripeError> {
        let path = format!("/v1/setup_intents/{setup_intent}");
        let raw = self
            .send(&Call::get("setup_intent.retrieve", &path, Form::new()))
            .await?;
        Ok(id_of(&raw["payment_method"]))
    }
}
