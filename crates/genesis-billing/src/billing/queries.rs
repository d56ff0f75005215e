//! What the entry points read and the leases they take, through the service rather than the store: the
//! records, the stored webhook events, the live MRR, the database's health, and fleet-wide job leases.

use std::time::Duration;

use super::{BillingError, BillingService};
use crate::business::Business;
use crate::revenue::{mrr_from_tally, MrrLine};
use crate::store::{BusinessFilter, BusinessPages, JobLease, ProbeFailure, StoredEvent};

impl BillingService {
    /// One business's record.
    pub async fn business(&self, id: &str) -> Result<Option<Business>, BillingError> {
        Ok(self.store.get_business(id).await?)
    }

    /// A page of businesses matching `filter`, newest first.
    pub async fn list_businesses(
        &self,
        filter: &BusinessFilter,
    ) -> Result<Vec<Business>, BillingError> {
        Ok(self.store.list_businesses(filter).await?)
    }

    /// The next page of a walk over the businesses; `None` once every one was returned.
    pub async fn next_page(
        &self,
        pages: &mut BusinessPages,
    ) -> Result<Option<Vec<Business>>, BillingError> {
        Ok(pages.next(&self.store).await?)
    }

    /// Live MRR by type and currency, aggregated in the database.
    pub async fn mrr(&self) -> Result<Vec<MrrLine>, BillingError> {
        Ok(mrr_from_tally(&self.store.subscription_tally().await?))
    }

    /// A business's audit trail: (kind, detail, time) entries.
    pub async fn events_of(&self, id: &str) -> Result<Vec<(String, String, i64)>, BillingError> {
        Ok(self.store.events_of(id).await?)
    }

    /// Stored webhook events, newest first, optionally only those with `status`.
    pub async fn stored_events(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, BillingError> {
        Ok(self.store.list_events(status, limit).await?)
    }

    /// One stored webhook event.
    pub async fn stored_event(&self, id: &str) -> Result<Option<StoredEvent>, BillingError> {
        Ok(self.store.event(id).await?)
    }

    /// Marks a stored event for a fresh apply; `false` when there is no such event.
    pub async fn reset_event(&self, id: &str) -> Result<bool, BillingError> {
        Ok(self.store.reset_event(id).await?)
    }

    /// `sqlite` or `postgres`.
    pub fn database_kind(&self) -> &'static str {
        self.store.backend().as_str()
    }

    /// A read on the database (the first half of `/health`'s probe).
    pub async fn probe_read(&self) -> Result<(), (ProbeFailure, sqlx::Error)> {
        self.store.probe_read().await
    }

    /// A committed write on the database (the second half of `/health`'s probe).
    pub async fn probe_write(&self) -> Result<(), (ProbeFailure, sqlx::Error)> {
        self.store.probe_write().await
    }

    /// The fleet-wide job `name` for a background loop, or `None` to skip this run (see
    /// [`JobLease::try_claim`]).
    pub async fn try_claim_job(&self, name: &str) -> Option<JobLease> {
        JobLease::try_claim(&self.store, name, self.lease).await
    }

    /// The fleet-wide job `name`, waiting while another process runs it (see [`JobLease::claim_waiting`]).
    pub async fn claim_job_waiting(
        &self,
        name: &str,
        lease: Duration,
    ) -> Result<JobLease, BillingError> {
        Ok(JobLease::claim_waiting(&self.store, name, lease).await?)
    }
}
