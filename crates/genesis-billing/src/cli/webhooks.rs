//! `webhooks register | list | replay`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::WebhooksCommand;
use super::{print_json, table, Failure};
use crate::app::app_state;
use crate::billing::BillingService;
use crate::config::Settings;

pub(super) async fn run(
    settings: &Settings,
    service: Arc<BillingService>,
    cmd: WebhooksCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match cmd {
        WebhooksCommand::Register { url } => {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                return Err(Failure::Usage("--url must be an http(s) URL".into()));
            }
            let (id, secret) = service.register_webhook_endpoint(&url).await?;
            let secret = secrecy::ExposeSecret::expose_secret(&secret);
            if json {
                print_json(
                    &serde_json::json!({"id": id, "url": url, "enabled_events": crate::billing::HANDLED_EVENTS, "secret": secret}),
                );
            } else {
                println!("webhook endpoint {id} for {url}");
                println!("signing secret (shown once; set it as STRIPE_WEBHOOK_SECRET): {secret}");
            }
        }
        WebhooksCommand::List { failed, limit } => {
            let mut events = Vec::new();
            if failed {
                events.extend(
                    service
                        .stored_events(Some("failed"), limit)
                        .await
                        .context("while reading events")?,
                );
                events.extend(
                    service
                        .stored_events(Some("dead"), limit)
                        .await
                        .context("while reading events")?,
                );
            } else {
                events = service
                    .stored_events(None, limit)
                    .await
                    .context("while reading events")?;
            }
            if json {
                print_json(&events);
            } else {
                let rows: Vec<Vec<String>> = events
                    .iter()
                    .map(|e| {
                        vec![
                            e.event_id.clone(),
                            e.event_type.clone(),
                            crate::business::rfc3339(e.created),
                            e.status.clone(),
                            e.attempts.to_string(),
                            e.business_id.clone().unwrap_or_else(|| "-".into()),
                            e.last_error
                                .clone()
                                .unwrap_or_default()
                                .chars()
                                .take(60)
                                .collect(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "EVENT",
                            "TYPE",
                            "CREATED",
                            "STATUS",
                            "ATTEMPTS",
                            "BUSINESS",
                            "LAST ERROR"
                        ],
                        &rows
                    )
                );
            }
        }
        WebhooksCommand::Replay { id } => {
            let state = app_state(settings, service.clone());
            if !service
                .reset_event(&id)
                .await
                .context("while reading events")?
            {
                eprintln!("no stored event {id}");
                return Ok(ExitCode::from(1));
            }
            state.inbox.apply(&id).await;
            let event = service
                .stored_event(&id)
                .await
                .context("while reading events")?;
            match event {
                Some(e) if json => print_json(&e),
                Some(e) => println!(
                    "{}: {}{}",
                    e.event_id,
                    e.status,
                    e.last_error.map(|l| format!(" ({l})")).unwrap_or_default()
                ),
                None => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
