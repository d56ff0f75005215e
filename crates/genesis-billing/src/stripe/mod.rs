//! Our own thin Stripe client: form encoding, errors, retry policy, rate limit, typed calls.
//!
//! It shares no code with `stripe-sim`, so each can catch the other's mistakes about Stripe's wire format.

pub mod billing_portal;
pub mod client;
pub mod error;
pub mod form;
pub mod rate_limit;
pub mod resources;
pub mod retry;

pub use billing_portal::{
    NewPortalSession, PortalConfiguration, PortalConfigurationParams, PortalFeatures, PortalSession,
};
pub use client::{Call, ClientConfig, StripeClient, STRIPE_VERSION};
pub use error::StripeError;
pub use form::Form;
pub use resources::*;
pub use retry::RetryPolicy;
