//! The webhook inbox, in the order a delivery meets it: verify the signature on the raw bytes
//! (`signature`), read the envelope once (`envelope`), store it and acknowledge once it is on disk
//! (`inbox`, group commit), apply it (`apply`) — plus background retries of failed applies and gap fill
//! from Stripe's event list (entry points on `Inbox`).

mod apply;
mod envelope;
mod inbox;
pub mod signature;

pub use crate::billing::{CONNECTED_ACCOUNT, LIVEMODE_MISMATCH, TOO_DEEP};
pub use envelope::{too_deep, valid_event_id, valid_event_type, MAX_DEPTH, MAX_ID_LEN};
pub use inbox::{Inbox, ReceiveError, Received};
pub use signature::Rejection;

/// Largest webhook body accepted (SPEC §1.4).
pub const MAX_BODY: usize = 1 << 20;

/// Appliers working side by side; each takes the events of its share of customers, in order.
const APPLY_LANES: usize = 4;
