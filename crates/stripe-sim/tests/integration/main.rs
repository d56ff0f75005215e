//! The simulator's integration tests, one binary: each module is one area, over real HTTP on 127.0.0.1.

mod common;

mod billing_portal;
mod idempotency_and_faults;
mod persistence;
mod subscription_lifecycle;
mod webhooks;
mod wire_format;
