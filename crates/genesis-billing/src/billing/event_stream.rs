//! Reading and operating the stream of events to the meta-agent (SPEC §1.6): the pull API's pages, and the
//! operator's replay and redelivery. The outbox itself lives in the store; the push is `outbound`'s.

use super::{BillingError, BillingService};
use crate::business::{is_business_id, InvalidInput};

// The store's event types that are part of the service's API, so entry points need not name the store.
pub use crate::store::{
    BadCursor, Cursor, Delivery, OutboundBacklog, OutboundEvent, OutboundFilter, Replay,
    UPDATE_TYPES,
};

/// The most events one page returns (the pull API's and the store's cap).
pub const MAX_EVENTS_PAGE: i64 = 1000;

/// The page size when the caller names none.
pub const DEFAULT_EVENTS_PAGE: i64 = 100;

fn invalid(field: &'static str, reason: &str) -> InvalidInput {
    InvalidInput {
        field,
        reason: reason.to_owned(),
    }
}

/// Checks a listing's parameters as a caller gave them: an `after` cursor (empty means the start), a business
/// id, and a page size of 1..=1000.
pub fn events_filter(
    after: Option<&str>,
    business_id: Option<&str>,
    delivery: Option<Delivery>,
    limit: i64,
) -> Result<OutboundFilter, InvalidInput> {
    let after = match after {
        None | Some("") => None,
        Some(a) => Some(
            a.parse::<Cursor>()
                .map_err(|e| invalid("after", &e.to_string()))?,
        ),
    };
    if let Some(b) = business_id {
        if !is_business_id(b) {
            return Err(invalid(
                "business_id",
                "must be 1-64 characters of letters, digits, '-' and '_'",
            ));
        }
    }
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(invalid("limit", "must be between 1 and 1000"));
    }
    Ok(OutboundFilter {
        after,
        business_id: business_id.map(str::to_owned),
        delivery,
        limit,
    })
}

impl BillingService {
    /// Events in commit order after `filter.after` (only those whose transactions committed), at most
    /// `filter.limit`.
    pub async fn events_page(
        &self,
        filter: &OutboundFilter,
    ) -> Result<Vec<OutboundEvent>, BillingError> {
        Ok(self.store.list_outbound(filter).await?)
    }

    /// How far delivery is behind (bounded counts).
    pub async fn events_backlog(&self) -> Result<OutboundBacklog, BillingError> {
        Ok(self.store.outbound_backlog().await?)
    }

    /// One event of the stream by its id.
    pub async fn outbound_event(&self, id: &str) -> Result<Option<OutboundEvent>, BillingError> {
        Ok(self.store.outbound_event(id).await?)
    }

    /// Queues a dead-lettered event for delivery again; any other is left as it is and reported.
    pub async fn replay_outbound(&self, id: &str) -> Result<Replay, BillingError> {
        Ok(self.store.replay_outbound(id).await?)
    }

    /// Queues every delivered or dead-lettered event written at or after `since` (Unix seconds), of one
    /// business or all, for delivery again (a receiver that lost its data); returns how many.
    pub async fn redeliver_outbound(
        &self,
        since: i64,
        business_id: Option<&str>,
    ) -> Result<u64, BillingError> {
        if let Some(b) = business_id {
            if !is_business_id(b) {
                return Err(invalid(
                    "business_id",
                    "must be 1-64 characters of letters, digits, '-' and '_'",
                )
                .into());
            }
        }
        Ok(self.store.redeliver_outbound(since, business_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_takes_what_a_caller_may_give_and_refuses_the_rest() {
        let f = events_filter(Some("0.7"), Some("biz-1"), Some(Delivery::Dead), 1000).unwrap();
        assert_eq!(f.after.map(|c| c.to_string()).as_deref(), Some("0.7"));
        assert_eq!(f.business_id.as_deref(), Some("biz-1"));
        assert_eq!((f.delivery, f.limit), (Some(Delivery::Dead), 1000));
        assert_eq!(events_filter(Some(""), None, None, 1).unwrap().after, None);
        let field = |r: Result<OutboundFilter, InvalidInput>| r.unwrap_err().field;
        for bad in ["abc", "1.2.3", "-1.2", "99999999999999999999.1"] {
            assert_eq!(field(events_filter(Some(bad), None, None, 10)), "after");
        }
        for bad in ["", "a b", "x/y", &"b".repeat(65), &"b".repeat(10_000)] {
            assert_eq!(
                field(events_filter(None, Some(bad), None, 10)),
                "business_id"
            );
        }
        for bad in [0, -1, 1001, i64::MAX] {
            assert_eq!(field(events_filter(None, None, None, bad)), "limit");
        }
    }
}
