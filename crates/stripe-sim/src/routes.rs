//! The `/v1` route table: method and path segments to a resource handler.

use crate::resources::{
    billing_portal, checkout, customer, event, invoice, payment_intent, payment_method, plain,
    price, product, subscription, test_clock, webhook_endpoint, with_id, Handler,
};

/// The handler for a Stripe API route, or `None` for "Unrecognized request URL".
pub fn route(method: &str, path: &str) -> Option<Handler> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let h = match (method, segs.as_slice()) {
        ("GET", ["v1", "customers"]) => plain(customer::list_all),
        ("POST", ["v1", "customers"]) => plain(customer::create),
        ("GET", ["v1", "customers", "search"]) => plain(customer::search),
        ("GET", ["v1", "customers", id]) => with_id(customer::retrieve, id),
        ("POST", ["v1", "customers", id]) => with_id(customer::update, id),
        ("DELETE", ["v1", "customers", id]) => with_id(customer::delete, id),
        ("GET", ["v1", "customers", id, "payment_methods"]) => {
            with_id(payment_method::list_for_customer, id)
        }

        ("GET", ["v1", "products"]) => plain(product::list_all),
        ("POST", ["v1", "products"]) => plain(product::create),
        ("GET", ["v1", "products", id]) => with_id(product::retrieve, id),
        ("POST", ["v1", "products", id]) => with_id(product::update, id),
        ("DELETE", ["v1", "products", id]) => with_id(product::delete, id),

        ("GET", ["v1", "prices"]) => plain(price::list_all),
        ("POST", ["v1", "prices"]) => plain(price::create),
        ("GET", ["v1", "prices", "search"]) => plain(price::search),
        ("GET", ["v1", "prices", id]) => with_id(price::retrieve, id),
        ("POST", ["v1", "prices", id]) => with_id(price::update, id),

        ("GET", ["v1", "subscriptions"]) => plain(subscription::list_all),
        ("POST", ["v1", "subscriptions"]) => plain(subscription::create),
        ("GET", ["v1", "subscriptions", "search"]) => plain(subscription::search),
        ("GET", ["v1", "subscriptions", id]) => with_id(subscription::retrieve, id),
        ("POST", ["v1", "subscriptions", id]) => with_id(subscription::update, id),
        ("DELETE", ["v1", "subscriptions", id]) => with_id(subscription::cancel, id),
        ("POST", ["v1", "subscriptions", id, "resume"]) => with_id(subscription::resume, id),

        ("GET", ["v1", "invoices"]) => plain(invoice::list_all),
        ("GET", ["v1", "invoices", id]) => with_id(invoice::retrieve, id),
        ("GET", ["v1", "invoices", id, "lines"]) => with_id(invoice::lines, id),
        ("POST", ["v1", "invoices", id, "pay"]) => with_id(invoice::pay, id),
        ("POST", ["v1", "invoices", id, "void"]) => with_id(invoice::void, id),
        ("POST", ["v1", "invoices", id, "finalize"]) => with_id(invoice::finalize, id),

        ("GET", ["v1", "payment_methods"]) => plain(payment_method::list_all),
        ("POST", ["v1", "payment_methods"]) => plain(payment_method::create),
        ("GET", ["v1", "payment_methods", id]) => with_id(payment_method::retrieve, id),
        ("POST", ["v1", "payment_methods", id]) => with_id(payment_method::update, id),
        ("POST", ["v1", "payment_methods", id, "attach"]) => {
            with_id(payment_method::attach_route, id)
        }
        ("POST", ["v1", "payment_methods", id, "detach"]) => with_id(payment_method::detach, id),

        ("GET", ["v1", "payment_intents"]) => plain(payment_intent::list_all),
        ("POST", ["v1", "payment_intents"]) => plain(payment_intent::create),
        ("GET", ["v1", "payment_intents", id]) => with_id(payment_intent::retrieve, id),
        ("POST", ["v1", "payment_intents", id]) => with_id(payment_intent::update, id),
        ("POST", ["v1", "payment_intents", id, "confirm"]) => with_id(payment_intent::confirm, id),
        ("POST", ["v1", "payment_intents", id, "cancel"]) => with_id(payment_intent::cancel, id),

        ("GET", ["v1", "setup_intents", id]) => with_id(retrieve_setup_intent, id),

        ("GET", ["v1", "checkout", "sessions"]) => plain(checkout::list_all),
        ("POST", ["v1", "checkout", "sessions"]) => plain(checkout::create),
        ("GET", ["v1", "checkout", "sessions", id]) => with_id(checkout::retrieve, id),
        ("GET", ["v1", "checkout", "sessions", id, "line_items"]) => {
            with_id(checkout::line_items, id)
        }
        ("POST", ["v1", "checkout", "sessions", id, "expire"]) => with_id(checkout::expire, id),

        ("GET", ["v1", "billing_portal", "configurations"]) => {
            plain(billing_portal::list_configurations)
        }
        ("POST", ["v1", "billing_portal", "configurations"]) => {
            plain(billing_portal::create_configuration)
        }
        ("GET", ["v1", "billing_portal", "configurations", id]) => {
            with_id(billing_portal::retrieve_configuration, id)
        }
        ("POST", ["v1", "billing_portal", "configurations", id]) => {
            with_id(billing_portal::update_configuration, id)
        }
        ("POST", ["v1", "billing_portal", "sessions"]) => plain(billing_portal::create_session),

        ("GET", ["v1", "events"]) => plain(event::list_all),
        ("GET", ["v1", "events", id]) => with_id(event::retrieve, id),

        ("GET", ["v1", "webhook_endpoints"]) => plain(webhook_endpoint::list_all),
        ("POST", ["v1", "webhook_endpoints"]) => plain(webhook_endpoint::create),
        ("GET", ["v1", "webhook_endpoints", id]) => with_id(webhook_endpoint::retrieve, id),
        ("POST", ["v1", "webhook_endpoints", id]) => with_id(webhook_endpoint::update, id),
        ("DELETE", ["v1", "webhook_endpoints", id]) => with_id(webhook_endpoint::delete, id),

        ("GET", ["v1", "test_helpers", "test_clocks"]) => plain(test_clock::list_all),
        ("POST", ["v1", "test_helpers", "test_clocks"]) => plain(test_clock::create),
        ("GET", ["v1", "test_helpers", "test_clocks", id]) => with_id(test_clock::retrieve, id),
        ("DELETE", ["v1", "test_helpers", "test_clocks", id]) => with_id(test_clock::delete, id),
        ("POST", ["v1", "test_helpers", "test_clocks", id, "advance"]) => {
            with_id(test_clock::advance, id)
        }
        _ => return None,
    };
    Some(h)
}

/// `GET /v1/setup_intents/{id}` (SetupIntents are created by setup-mode Checkout).
fn retrieve_setup_intent(
    state: &mut crate::state::State,
    params: &crate::form::Node,
    id: &str,
) -> crate::error::ApiResult<serde_json::Value> {
    crate::params::validate(params, &[&[("client_secret", crate::params::Spec::Str)]])?;
    crate::resources::respond(
        state,
        crate::resources::fetch(state, "setup_intent", id, "id")?,
        params,
    )
}
