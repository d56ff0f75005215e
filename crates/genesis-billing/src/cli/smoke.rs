//! `genesis-billing smoke`: a throwaway business through create, checkout link and takedown against the
//! configured Stripe, each step checked, cleaned up whatever happens. The staging check before go-live.

use std::process::ExitCode;

use serde::Serialize;

use super::{print_json, Failure};
use crate::billing::BillingService;
use crate::business::{Billing, NewBusiness};
use crate::config::{Settings, StripeMode};

#[derive(Debug, Serialize)]
struct Step {
    step: &'static str,
    ok: bool,
    detail: String,
}

/// Runs the smoke test; exit 1 when any step failed.
pub async fn run(
    settings: &Settings,
    service: &BillingService,
    json: bool,
) -> Result<ExitCode, Failure> {
    match settings.stripe.as_ref().map(|s| s.mode) {
        Some(StripeMode::Test) => {}
        Some(StripeMode::Live) => {
            return Err(Failure::Usage(
                "smoke refuses live keys: use an sk_test_ or rk_test_ key".into(),
            ))
        }
        None => {
            return Err(Failure::Usage(
                "smoke needs payments enabled and a test key".into(),
            ))
        }
    }
    let mut steps = Vec::new();
    let mut check = |step: &'static str, ok: bool, detail: String| {
        steps.push(Step { step, ok, detail });
        ok
    };
    let name = format!("genesis-smoke-{}", uuid::Uuid::new_v4().simple());
    let created = service
        .create_business(
            NewBusiness {
                name,
                business_type: "tool".into(),
                email: None,
            },
            None,
        )
        .await;
    let business = match created {
        Ok((b, _)) => b,
        Err(e) => {
            check("create", false, e.to_string());
            return finish(steps, json);
        }
    };
    let id = business.business_id.clone();
    let provisioned = business.billing == Billing::Provisioned
        && business.stripe_customer_id.is_some()
        && matches!(
            business.subscription_status.as_deref(),
            Some("incomplete" | "trialing")
        );
    check(
        "create",
        provisioned,
        format!(
            "{id}: billing {}, subscription {}",
            business.billing,
            business.subscription_status.as_deref().unwrap_or("-")
        ),
    );
    if provisioned {
        match service.checkout_link(&id).await {
            Ok(s) => check(
                "checkout link",
                s.url.as_deref().is_some_and(|u| u.starts_with("http")),
                s.url.unwrap_or_default(),
            ),
            Err(e) => check("checkout link", false, e.to_string()),
        };
    }
    // Clean up whatever happened above.
    match service
        .takedown(&id, Some("smoke test"), crate::billing::Initiator::Cli)
        .await
    {
        Ok(s) => {
            let ok = s.status == "success" && (s.stripe == "cancelled" || s.stripe == "skipped");
            check(
                "takedown",
                ok,
                format!("{} (stripe: {})", s.status, s.stripe),
            );
        }
        Err(e) => {
            check("takedown", false, e.to_string());
        }
    }
    if let (Ok(stripe), Some(sub)) = (service.stripe(), &business.stripe_subscription_id) {
        match stripe.retrieve_subscription(sub).await {
            Ok(s) => check(
                "subscription cancelled in Stripe",
                s.status == "canceled",
                s.status,
            ),
            Err(e) => check("subscription cancelled in Stripe", false, e.to_string()),
        };
    }
    if let (Ok(stripe), Some(customer)) = (service.stripe(), &business.stripe_customer_id) {
        match stripe.retrieve_customer(customer).await {
            Ok(c) => check(
                "customer deleted in Stripe",
                c.deleted,
                format!("deleted: {}", c.deleted),
            ),
            Err(e) => check("customer deleted in Stripe", false, e.to_string()),
        };
    }
    finish(steps, json)
}

fn finish(steps: Vec<Step>, json: bool) -> Result<ExitCode, Failure> {
    let ok = steps.iter().all(|s| s.ok);
    if json {
        print_json(&serde_json::json!({"ok": ok, "steps": steps}));
    } else {
        for s in &steps {
            println!(
                "{} {:<34} {}",
                if s.ok { "ok  " } else { "FAIL" },
                s.step,
                s.detail
            );
        }
        println!("smoke test {}", if ok { "passed" } else { "FAILED" });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
