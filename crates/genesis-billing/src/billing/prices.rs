//! The catalog in Stripe: `prices sync` creates missing Products and Prices by lookup key, idempotently.

use serde::Serialize;

use super::{BillingError, BillingService};
use crate::catalog::Entry;
use crate::stripe::Price;

/// How one catalog entry stands in Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceStatus {
    /// An active price with the lookup key matches the entry.
    Ok,
    /// `prices sync` created it.
    Created,
    /// No active price has the lookup key.
    Missing,
    /// A price has the key but another amount, currency or interval; sync reports it and changes nothing.
    Differs,
    /// It differed, and `prices sync --transfer` moved the key to a new price with the catalog's terms.
    Transferred,
}

/// One line of `prices sync` / `prices list`.
#[derive(Debug, Clone, Serialize)]
pub struct PriceSyncLine {
    pub business_types: Vec<String>,
    pub lookup_key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub interval: String,
    pub trial_days: u32,
    pub stripe_price_id: Option<String>,
    pub status: PriceStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<String>,
}

fn difference(entry: &Entry, price: &Price) -> Option<String> {
    let mut diffs = Vec::new();
    if price.unit_amount != Some(entry.amount_cents) {
        diffs.push(format!(
            "amount {:?} in Stripe, {} in the catalog",
            price.unit_amount, entry.amount_cents
        ));
    }
    if price.currency != entry.currency {
        diffs.push(format!(
            "currency {} in Stripe, {} in the catalog",
            price.currency, entry.currency
        ));
    }
    if price.interval.as_deref() != Some(entry.interval.as_str()) || price.interval_count != 1 {
        diffs.push(format!(
            "interval {:?}×{} in Stripe, {} in the catalog",
            price.interval, price.interval_count, entry.interval
        ));
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

impl BillingService {
    /// Compares the catalog with Stripe; with `create`, creates what is missing; with `transfer` too, moves
    /// the lookup key of a price that differs from the catalog to a new price on the same Product with the
    /// catalog's terms (`transfer_lookup_key`). Subscriptions keep the price they have; new ones get the new.
    pub async fn sync_prices(
        &self,
        create: bool,
        transfer: bool,
    ) -> Result<Vec<PriceSyncLine>, BillingError> {
        let stripe = self.stripe()?;
        self.resolve_prices().await?;
        let mut lines = Vec::new();
        for key in self.catalog.lookup_keys() {
            let types: Vec<String> = self
                .catalog
                .prices
                .iter()
                .filter(|(_, e)| e.lookup_key == key)
                .map(|(t, _)| t.clone())
                .collect();
            let entry = self.catalog.prices[&types[0]].clone();
            let cached = self.prices.read().await.get(key).cloned();
            let (status, price_id, diff) = match cached {
                Some(p) => match (difference(&entry, &p), &p.product) {
                    (None, _) => (PriceStatus::Ok, Some(p.id), None),
                    (Some(d), Some(product)) if create && transfer => {
                        // Keyed by the price it replaces: a rerun replays, and moving the key back to
                        // terms it once had makes a new price rather than replaying the old one.
                        let price = stripe
                            .create_price(
                                product,
                                entry.amount_cents,
                                &entry.currency,
                                &entry.interval,
                                key,
                                true,
                                format!("genesis:catalog:{key}:transfer-from:{}", p.id),
                            )
                            .await?;
                        self.prices
                            .write()
                            .await
                            .insert(key.to_owned(), price.clone());
                        (PriceStatus::Transferred, Some(price.id), Some(d))
                    }
                    (Some(d), _) => (PriceStatus::Differs, Some(p.id), Some(d)),
                },
                None if !create => (PriceStatus::Missing, None, None),
                None => {
                    let name = entry
                        .product_name
                        .clone()
                        .unwrap_or_else(|| format!("Genesis {} plan", types.join("/")));
                    // Keys derive from the entry's content: a rerun replays, a changed entry makes new objects.
                    let fingerprint = format!(
                        "{}:{}:{}:{}",
                        entry.lookup_key, entry.amount_cents, entry.currency, entry.interval
                    );
                    let product = stripe
                        .create_product(
                            &name,
                            &[("genesis_lookup_key", key)],
                            format!("genesis:catalog:{fingerprint}:product"),
                        )
                        .await?;
                    let price = stripe
                        .create_price(
                            &product,
                            entry.amount_cents,
                            &entry.currency,
                            &entry.interval,
                            key,
                            false,
                            format!("genesis:catalog:{fingerprint}:price"),
                        )
                        .await?;
                    self.prices
                        .write()
                        .await
                        .insert(key.to_owned(), price.clone());
                    (PriceStatus::Created, Some(price.id), None)
                }
            };
            lines.push(PriceSyncLine {
                business_types: types,
                lookup_key: key.to_owned(),
                amount_cents: entry.amount_cents,
                currency: entry.currency.clone(),
                interval: entry.interval.clone(),
                trial_days: entry.trial_days,
                stripe_price_id: price_id,
                status,
                difference: diff,
            });
        }
        Ok(lines)
    }
}
