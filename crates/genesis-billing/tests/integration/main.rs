//! genesis-billing's integration tests, one binary (linking one test binary per file cost minutes on every
//! CI run): each module is one area, against a real simulator on 127.0.0.1, real SQLite files and the real
//! PostgreSQL. `cargo test -p genesis-billing --test integration replicas::` runs one module.

mod common;

mod cli;
mod crash;
mod event_delivery;
mod event_stream;
mod http_api;
mod manage_link;
mod notices;
mod operations;
mod outbox_events;
mod payment_collection;
mod provisioning;
mod replicas;
mod serve_process;
mod store_contract;
mod takedown;
mod webhooks;
