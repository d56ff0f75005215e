//! The inbox: a verified delivery's envelope goes to one writer task that stores every event waiting at
//! that moment in one transaction (group commit) with the outcomes the appliers reported since, and each
//! delivery is acknowledged once its own event is on disk. Also the retry loop's and gap fill's entry points.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};

use crate::billing::{reason, BillingError, BillingService, HANDLED_EVENTS};
use crate::config::StripeMode;
use crate::metrics::WebhookOutcome;
use crate::store::{now, EventResult, Inserted, NewEvent, StoredEvent};

use super::apply::{apply_loop, count_outcome, Applier, Work};
use super::envelope::{self, valid_event_id, valid_event_type};
use super::signature::{self, Rejection};
use super::{APPLY_LANES, MAX_BODY};

/// Events waiting to be committed; beyond this, deliveries wait (back-pressure instead of memory growth).
const COMMIT_QUEUE: usize = 8192;

/// Most events written in one transaction.
const MAX_BATCH: usize = 512;

/// What became of a delivery that passed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored now, and applied with it or right after.
    Stored,
    /// Already stored by an earlier delivery: acknowledged, not applied again.
    Duplicate,
}

/// Why a delivery was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveError {
    /// The delivery is refused (4xx); nothing was stored.
    Rejected(Rejection),
    /// Our database failed; Stripe should deliver again (5xx).
    Unavailable,
}

/// An event to store, its applier lane, and where to answer once it is on disk.
type CommitRequest = (NewEvent, usize, oneshot::Sender<Result<Inserted, ()>>);

/// Stored events waiting for the applier in memory. Beyond this, new events are stored unleased and
/// `retry_due` applies them from the database, so memory stays bounded under any burst.
const APPLY_QUEUE: usize = 4096;

/// Most due events `retry_due` claims at once.
const RETRY_BATCH: usize = 200;

/// The webhook receiver and its background work.
///
/// One committer task writes every event waiting at that moment in one transaction (group commit): each
/// response is held until its own event is on disk, and one disk sync serves many events. An event about
/// no business we know, or of a type we do not handle, is stored already settled as ignored; a subscription
/// status for a business's current subscription is written in the transaction that stores it
/// (`Triage::Status`). Any other is acknowledged once stored — the durable record is what Stripe's retry
/// would otherwise provide — and then applied in arrival order within its customer's lane, a status it finds
/// left to the writer's next commit with the outcome (`Writes::Deferred`). A crash between the two leaves it
/// `pending`, and `retry_due` applies it after restart.
pub struct Inbox {
    applier: Arc<Applier>,
    secrets: Vec<SecretString>,
    tolerance: i64,
    commits: mpsc::Sender<CommitRequest>,
    /// Who holds the events this inbox applies (the lease owner in the database).
    owner: Arc<str>,
    lanes: Vec<mpsc::Sender<Work>>,
}

impl Inbox {
    /// Starts the committer and applier tasks; they stop when the inbox is dropped. `mode` is the
    /// configured key's (`Settings::key_mode`): events of the other mode are stored ignored.
    pub fn new(
        service: Arc<BillingService>,
        secrets: Vec<SecretString>,
        tolerance_secs: i64,
        mode: Option<StripeMode>,
    ) -> Self {
        let applier = Arc::new(Applier {
            service,
            lease: Duration::from_secs(60),
            mode,
        });
        let (commits, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        // Events this inbox stores are leased to it until applied, under this owner id.
        let owner: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let (outcomes, outcome_rx) = mpsc::unbounded_channel();
        let mut lanes = Vec::with_capacity(APPLY_LANES);
        for _ in 0..APPLY_LANES {
            let (lane, lane_rx) = mpsc::channel(APPLY_QUEUE / APPLY_LANES);
            tokio::spawn(apply_loop(applier.clone(), lane_rx, outcomes.clone()));
            lanes.push(lane);
        }
        tokio::spawn(commit_loop(
            applier.service.clone(),
            owner.clone(),
            applier.lease,
            commit_rx,
            lanes.clone(),
            outcome_rx,
        ));
        Self {
            applier,
            secrets,
            tolerance: tolerance_secs,
            commits,
            owner,
            lanes,
        }
    }

    /// Whether any webhook signing secret is configured.
    pub fn has_secret(&self) -> bool {
        !self.secrets.is_empty()
    }

    fn service(&self) -> &BillingService {
        &self.applier.service
    }

    fn reject(&self, r: Rejection) -> ReceiveError {
        self.service().metrics().webhook_rejected(r.reason());
        tracing::warn!(reason = r.reason(), "webhook rejected");
        ReceiveError::Rejected(r)
    }

    /// Handles one delivery: `Ok` only once the event is durably stored.
    pub async fn receive(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Received, ReceiveError> {
        if body.len() > MAX_BODY {
            return Err(self.reject(Rejection::TooLarge));
        }
        signature::verify(signature, body, &self.secrets, now(), self.tolerance)
            .map_err(|r| self.reject(r))?;
        // The envelope is read once; what the writer and the applier need travels with the event.
        let Some(read) = envelope::read(body, self.applier.mode) else {
            return Err(self.reject(Rejection::BadPayload));
        };
        let (kind, created, lane) = (read.kind, read.created, read.lane);
        let new = NewEvent {
            id: read.id,
            event_type: kind.clone(),
            created,
            source: "webhook",
            payload: read.payload.to_owned(),
            triage: read.triage,
        };
        let (reply, stored) = oneshot::channel();
        self.commits
            .send((new, lane, reply))
            .await
            .map_err(|_| ReceiveError::Unavailable)?;
        let outcome = match stored.await {
            Ok(Ok(Inserted::Duplicate)) => WebhookOutcome::Duplicate,
            Ok(Ok(Inserted::Ignored(_))) => WebhookOutcome::Ignored,
            Ok(Ok(Inserted::Applied)) => {
                self.service()
                    .metrics()
                    .webhook_apply_lag((now() - created).max(0) as f64);
                WebhookOutcome::Applied
            }
            Ok(Ok(Inserted::Pending)) => return Ok(Received::Stored),
            // Not stored (the database refused it even alone, or failed): Stripe delivers it again.
            Ok(Ok(Inserted::Failed) | Err(())) | Err(_) => return Err(ReceiveError::Unavailable),
        };
        self.service().metrics().webhook_event(&kind, outcome);
        Ok(if outcome == WebhookOutcome::Duplicate {
            Received::Duplicate
        } else {
            Received::Stored
        })
    }

    /// Applies a stored event now unless another worker holds it (`webhooks replay`, tests).
    pub async fn apply(&self, id: &str) {
        self.applier.apply(id).await;
    }

    /// Claims a batch of events whose backoff has passed (and any left pending by a crash or a burst) and
    /// hands them to the appliers, whose outcomes the writer records as for new events. Returns how many
    /// it claimed, once the appliers have taken them all (0 if they are gone).
    pub async fn retry_due(&self) -> usize {
        let until = now() + self.applier.lease.as_secs() as i64;
        let store = self.service().store();
        let due: Vec<StoredEvent> = match store
            .claim_due(&self.owner, until, RETRY_BATCH as i64)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim due webhook events");
                return 0;
            }
        };
        let claimed = due.len();
        for e in due {
            let lane = envelope::stored_lane(&e.event_id, &e.payload);
            let work = Work {
                attempts: e.attempts,
                id: e.event_id,
                event_type: e.event_type,
                created: e.created,
                payload: e.payload,
                received: false,
            };
            // Waits while the lane is full: claims never outrun the appliers by more than a batch.
            if self.lanes[lane].send(work).await.is_err() {
                // The appliers are gone (shutting down): the rest stay leased and are retried later.
                return 0;
            }
        }
        claimed
    }

    /// Reads Stripe's event list since the newest stored event and applies what webhooks missed.
    pub async fn gap_fill(&self) -> Result<usize, BillingError> {
        let service = self.service();
        let stripe = service.stripe()?;
        // A minute of overlap: events created in the same second as the newest one may not all be stored.
        let since = match service.store().newest_event_created().await? {
            Some(t) => t - 60,
            None => now() - 3600,
        };
        let mut missed = 0;
        let mut after: Option<String> = None;
        for _page in 0..50 {
            let page = stripe
                .list_events(since, HANDLED_EVENTS, after.as_deref())
                .await?;
            let data = page.data;
            for event in &data {
                let (Some(id), Some(kind), Some(created)) = (
                    event["id"].as_str(),
                    event["type"].as_str(),
                    event["created"].as_i64(),
                ) else {
                    continue;
                };
                if !valid_event_id(id) || !valid_event_type(kind) {
                    continue;
                }
                if service
                    .store()
                    .insert_event(id, kind, created, "gap_fill", &event.to_string())
                    .await?
                {
                    missed += 1;
                    self.applier.apply(id).await;
                }
            }
            match (page.has_more, data.last().and_then(|e| e["id"].as_str())) {
                (true, Some(last)) => after = Some(last.to_owned()),
                _ => break,
            }
        }
        if missed > 0 {
            tracing::info!(missed, "gap fill applied events that webhooks missed");
        }
        Ok(missed)
    }
}

/// The inbox's single writer: every event waiting at that moment and every apply outcome reported since
/// the last commit go into one transaction. Answers each waiting delivery once its event is on disk, and
/// hands new events to the applier.
async fn commit_loop(
    service: Arc<BillingService>,
    owner: Arc<str>,
    lease: Duration,
    mut queue: mpsc::Receiver<CommitRequest>,
    applies: Vec<mpsc::Sender<Work>>,
    mut outcomes: mpsc::UnboundedReceiver<EventResult>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut results = Vec::new();
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            n = outcomes.recv_many(&mut results, MAX_BATCH) => {
                // The applier lives as long as this loop holds its queue; zero means it is gone.
                if n == 0 {
                    break;
                }
            }
        }
        while results.len() < MAX_BATCH {
            match outcomes.try_recv() {
                Ok(r) => results.push(r),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut routes = Vec::with_capacity(batch.len());
        for (event, lane, reply) in batch.drain(..) {
            events.push(event);
            routes.push((lane, reply));
        }
        // Leased to this inbox and handed over in memory while the applier keeps up; otherwise stored
        // free, for `retry_due` to pick up from the database.
        let keep_up = applies.iter().all(|lane| lane.capacity() >= events.len());
        let until = now() + lease.as_secs() as i64;
        match service
            .store()
            .write_inbox(
                &events,
                &owner,
                keep_up,
                until,
                std::mem::take(&mut results),
                reason,
            )
            .await
        {
            Ok(written) => {
                let metrics = service.metrics();
                let deferred = |r: &&EventResult| r.change.is_some() || r.history.is_some();
                for r in written.settled.iter().filter(deferred) {
                    count_outcome(metrics, r);
                }
                for ((event, (lane, reply)), done) in
                    events.into_iter().zip(routes).zip(written.stored)
                {
                    let _ = reply.send(Ok(done));
                    if done == Inserted::Pending && keep_up {
                        let _ = applies[lane].try_send(Work {
                            id: event.id,
                            event_type: event.event_type,
                            created: event.created,
                            payload: event.payload,
                            attempts: 0,
                            received: true,
                        });
                    }
                }
            }
            Err(e) => {
                // The outcomes are lost with the transaction; their events stay leased and pending, and
                // `retry_due` applies them again once the lease expires.
                tracing::error!(error = %e, count = events.len(), "cannot store webhook events");
                for (_, reply) in routes {
                    let _ = reply.send(Err(()));
                }
            }
        }
        results.clear();
    }
}
