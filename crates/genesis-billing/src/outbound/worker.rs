//! The delivery loop `serve` runs when `GENESIS_DASHBOARD_URL` is set. It takes the head of each
//! business's queue (`Store::due_outbound`), leases it (so two replicas never POST one event at once, and
//! a SIGKILLed replica's lease runs out), and drains that business in order: after a 2xx or a dead letter
//! it goes on with the business's next event at once; after a retryable failure the business waits out its
//! backoff while the others go on. Up to `concurrency` businesses are in flight. It wakes when this process
//! writes an event (`Store::outbox_signal`) and polls for the rest (other replicas' writes, ended backoffs).
//!
//! Outcomes are written by one recorder task, a batch of whatever attempts ended meanwhile per transaction,
//! together with the lease of each business's next event (`Store::settle_outbound`): one disk sync for many
//! events instead of three statements each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::metrics::{Metrics, OutboundOutcome};
use crate::store::{
    now_ms, OutboundBacklog, OutboundEvent, Settle, SettleOutcome, Settled, Store, StoreError,
    UPDATE_TYPES,
};

use super::deliver::{backoff, Deliverer, Outcome};
use super::destination::OutboundSettings;

/// How often the outbox is read without being woken: bounds the delay for other replicas' events and for
/// retries whose backoff ended.
pub const POLL: Duration = Duration::from_millis(500);

/// How often stranded blocked events are looked for (a rare PostgreSQL race, or a pruned head): the
/// longest such an event waits.
const SWEEP: Duration = Duration::from_secs(300);

/// Most outcomes the recorder writes in one transaction.
const SETTLE_BATCH: usize = 128;

/// One outcome for the recorder, and where its result goes.
struct Job {
    settle: Settle,
    reply: oneshot::Sender<Result<Settled, StoreError>>,
}

/// Delivers the outbox of one process.
pub struct Worker {
    store: Store,
    metrics: Arc<Metrics>,
    deliverer: Deliverer,
    settings: Arc<OutboundSettings>,
    /// This process's lease name.
    owner: String,
    /// To the recorder; bounded by the tasks that can wait on it (one job each).
    jobs: mpsc::Sender<Job>,
    recorder: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
}

impl Worker {
    /// A worker for `settings`, or `None` when no URL is configured (nothing to push).
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        settings: Arc<OutboundSettings>,
    ) -> Result<Option<Self>, reqwest::Error> {
        let Some(url) = settings.url.clone() else {
            return Ok(None);
        };
        let (jobs, recorder) = mpsc::channel(settings.concurrency.max(1));
        Ok(Some(Self {
            store,
            metrics,
            deliverer: Deliverer::new(&settings, url)?,
            settings,
            owner: format!("outbound_{}", uuid::Uuid::new_v4().simple()),
            jobs,
            recorder: std::sync::Mutex::new(Some(recorder)),
        }))
    }

    /// Runs until `stop` turns true: then claims nothing more and waits for the POSTs in flight (each
    /// bounded by the timeout; if the task is aborted first, their leases run out and another attempt
    /// sends the same event again).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tracing::info!(
            destination = %self.settings.url.as_ref().map(|u| u.origin()).unwrap_or_default(),
            signed = !self.settings.secrets.is_empty(),
            concurrency = self.settings.concurrency,
            "pushing events to the meta-agent"
        );
        let signal = self.store.outbox_signal();
        let Some(jobs) = self
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            tracing::error!("an event delivery worker runs only once");
            return;
        };
        let recorder = tokio::spawn(self.clone().record_batches(jobs));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut swept: Option<std::time::Instant> = None;
        // The business each task drains: one task per business, so its events stay in order.
        let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut watching = true;
        loop {
            if *stop.borrow() {
                break;
            }
            if swept.is_none_or(|t| t.elapsed() >= SWEEP) {
                swept = Some(std::time::Instant::now());
                match self.store.unblock_stranded().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        events = n,
                        "unblocked events stranded behind a vanished one"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check the outbox for stranded events")
                    }
                }
            }
            let free = self.settings.concurrency.saturating_sub(tasks.len());
            if free > 0 {
                self.start_due(free, &mut tasks, &mut busy, &stop).await;
            }
            tokio::select! {
                _ = signal.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            tracing::error!(error = %e, "an event delivery task failed");
                            e.id()
                        }
                    };
                    busy.remove(&id);
                }
                changed = stop.changed(), if watching => watching = changed.is_ok(),
            }
        }
        tracing::info!(in_flight = tasks.len(), "event delivery stopping");
        while tasks.join_next().await.is_some() {}
        recorder.abort();
    }

    /// Writes outcomes as they come, each batch of what is waiting in one transaction.
    async fn record_batches(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(SETTLE_BATCH);
        while jobs.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
            let settles: Vec<Settle> = batch.iter().map(|j| j.settle.clone()).collect();
            let now = now_ms();
            let until = now + self.settings.lease().as_millis() as i64;
            match self
                .store
                .settle_outbound(&self.owner, &settles, now, until)
                .await
            {
                Ok(settled) => {
                    for (job, s) in batch.drain(..).zip(settled) {
                        let _ = job.reply.send(Ok(s));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = batch.len(), "cannot record event deliveries; their leases run out and they are sent again");
                    for job in batch.drain(..) {
                        let _ = job.reply.send(Err(StoreError::Worker(
                            "the outcome could not be written".into(),
                        )));
                    }
                }
            }
        }
    }

    /// Claims due heads of businesses not already being drained here and starts a task for each.
    async fn start_due(
        self: &Arc<Self>,
        free: usize,
        tasks: &mut JoinSet<()>,
        busy: &mut HashMap<tokio::task::Id, String>,
        stop: &watch::Receiver<bool>,
    ) {
        let limit = (free + busy.len()).min(1000) as i64;
        let due = match self.store.due_outbound(now_ms(), limit).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event outbox");
                return;
            }
        };
        for event in due {
            if tasks.len() >= self.settings.concurrency {
                break;
            }
            if busy.values().any(|b| *b == event.business_id) || !self.claim(&event).await {
                continue;
            }
            let business = event.business_id.clone();
            let (worker, stop) = (self.clone(), stop.clone());
            let handle = tasks.spawn(async move { worker.drain(event, stop).await });
            busy.insert(handle.id(), business);
        }
    }

    /// Leases `event` for one POST.
    async fn claim(&self, event: &OutboundEvent) -> bool {
        let now = now_ms();
        let until = now + self.settings.lease().as_millis() as i64;
        match self
            .store
            .claim_outbound(event.seq, &self.owner, now, until)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, event_id = %event.id, "cannot lease an event");
                false
            }
        }
    }

    /// Delivers `event` (already leased), then the business's following events while each one is
    /// delivered or dead-lettered.
    async fn drain(&self, mut event: OutboundEvent, stop: watch::Receiver<bool>) {
        loop {
            let outcome = self.deliverer.deliver(&event).await;
            let go_on = !*stop.borrow();
            match self.record(&event, outcome, go_on).await {
                Some(next) if !*stop.borrow() => event = next,
                _ => return,
            }
        }
    }

    /// Writes the outcome of one attempt; returns the business's next event, leased, when it goes on and
    /// `next` is wanted.
    async fn record(
        &self,
        event: &OutboundEvent,
        outcome: Outcome,
        next: bool,
    ) -> Option<OutboundEvent> {
        let label = update_type_label(&event.update_type);
        let (settle, metric) = match outcome {
            Outcome::Delivered => {
                tracing::debug!(business_id = %event.business_id, event_id = %event.id, update_type = label, "event delivered");
                (SettleOutcome::Delivered, OutboundOutcome::Delivered)
            }
            Outcome::Retry { error, retry_after } => {
                let now = now_ms();
                let deadline = event
                    .retry_from
                    .saturating_mul(1000)
                    .saturating_add(self.settings.give_up.as_millis() as i64);
                let attempts = event.attempts + 1;
                if now >= deadline {
                    let error = format!(
                        "gave up after {attempts} attempts in {} s: {error}",
                        self.settings.give_up.as_secs()
                    );
                    tracing::warn!(business_id = %event.business_id, event_id = %event.id, update_type = label, %error, "event dead-lettered");
                    (SettleOutcome::Dead { error }, OutboundOutcome::DeadLettered)
                } else {
                    let wait = backoff(
                        event.attempts,
                        self.settings.backoff_cap,
                        retry_after,
                        fastrand::f64(),
                    );
                    let next = now.saturating_add(wait.as_millis() as i64).min(deadline);
                    tracing::info!(business_id = %event.business_id, event_id = %event.id, update_type = label, attempts, retry_in_ms = next - now, %error, "event delivery failed; retrying");
                    (
                        SettleOutcome::Retry {
                            next_attempt_ms: next,
                            error,
                        },
                        OutboundOutcome::Retried,
                    )
                }
            }
            Outcome::Dead { error } => {
                tracing::warn!(business_id = %event.business_id, event_id = %event.id, update_type = label, %error, "event refused by the receiver; dead-lettered");
                (SettleOutcome::Dead { error }, OutboundOutcome::DeadLettered)
            }
        };
        let (reply, written) = oneshot::channel();
        let job = Job {
            settle: Settle {
                seq: event.seq,
                business_id: event.business_id.clone(),
                outcome: settle,
                claim_next: next,
            },
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return None;
        }
        match written.await {
            Ok(Ok(Settled { held: true, next })) => {
                self.metrics.outbound_event(label, metric);
                next
            }
            Ok(Ok(Settled { held: false, .. })) => {
                tracing::warn!(event_id = %event.id, "the event's lease ran out before its outcome was written; another attempt follows");
                None
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

/// The metric label of an update type: one of the fixed names, so a stray value cannot add series.
fn update_type_label(update_type: &str) -> &'static str {
    UPDATE_TYPES
        .iter()
        .find(|t| **t == update_type)
        .copied()
        .unwrap_or("other")
}

/// Seconds since the oldest undelivered event was written (0 when none).
pub fn oldest_age_secs(backlog: &OutboundBacklog, now: i64) -> i64 {
    backlog
        .oldest_pending_at
        .map_or(0, |t| now.saturating_sub(t).max(0))
}

/// Seconds since the oldest undelivered event was written, now (0 when none).
pub fn oldest_age(backlog: &OutboundBacklog) -> i64 {
    oldest_age_secs(backlog, crate::store::now())
}

/// Sets the backlog gauges from the store (a scrape, when a URL is configured): three bounded reads.
pub async fn refresh_gauges(store: &Store, metrics: &Metrics) -> Result<(), StoreError> {
    let backlog = store.outbound_backlog().await?;
    metrics.set_outbound_backlog(backlog.pending, oldest_age(&backlog), backlog.dead);
    Ok(())
}

/// Deletes events written longer than `retention` ago, delivered or not; returns how many.
pub async fn prune(store: &Store, retention: Duration) -> Result<u64, StoreError> {
    let before = crate::store::now().saturating_sub(retention.as_secs() as i64);
    store.prune_outbound(before).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_update_types_become_labels() {
        assert_eq!(
            update_type_label("billing.provisioned"),
            "billing.provisioned"
        );
        assert_eq!(update_type_label("billing.provisioned\n"), "other");
        assert_eq!(update_type_label(""), "other");
    }

    #[test]
    fn the_oldest_age_is_zero_without_a_backlog_and_never_negative() {
        let mut b = OutboundBacklog {
            pending: 0,
            oldest_pending_at: None,
            dead: 0,
        };
        assert_eq!(oldest_age_secs(&b, 100), 0);
        b.oldest_pending_at = Some(40);
        assert_eq!(oldest_age_secs(&b, 100), 60);
        b.oldest_pending_at = Some(140);
        assert_eq!(oldest_age_secs(&b, 100), 0, "clock skew");
    }
}
