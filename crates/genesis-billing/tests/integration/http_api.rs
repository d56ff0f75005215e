//! The admin API, health and metrics over real HTTP.

use crate::common;

use common::{App, World, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn assert_error_shape(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(
        v["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{v}"
    );
}

#[tokio::test]
async fn without_configured_tokens_the_admin_api_refuses_everything() {
    let world = World::new().await;
    let app = App::start(&world, &[], &[], None).await;
    let (status, v) = body(
        app.admin(Method::GET, "/v1/businesses")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_error_shape(&v, "admin_api_disabled");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_and_any_configured_token_works() {
    let world = World::new().await;
    let app = App::start(&world, &["other-token", ADMIN_TOKEN], &[], None).await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic YWRtaW4="),
        Some("Bearer "),
    ] {
        let mut req = app.client.get(app.url("/v1/businesses"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, v) = body(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_error_shape(&v, "unauthorized");
    }
    let ok = app
        .client
        .get(app.url("/v1/businesses"))
        .bearer_auth("other-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn create_honours_the_idempotency_key_and_refuses_its_reuse_with_other_parameters() {
    let world = World::new().await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    let send = |name: &str| {
        app.admin(Method::POST, "/v1/businesses")
            .header("idempotency-key", "agent-req-1")
            .json(&json!({"name": name, "business_type": "saas", "email": "a@b.co"}))
            .send()
    };
    let (s1, first) = body(send("Keyed").await.unwrap()).await;
    assert_eq!(s1, 201, "{first}");
    assert_eq!(first["billing"], "provisioned");
    let second = send("Keyed").await.unwrap();
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let (s2, again) = body(second).await;
    assert_eq!(s2, 200);
    assert_eq!(again["business_id"], first["business_id"]);
    assert_eq!(
        world.objects("customer").len(),
        1,
        "one business, one customer"
    );
    let (s3, v) = body(send("Other").await.unwrap()).await;
    assert_eq!(s3, 422);
    assert_error_shape(&v, "idempotency_key_reused");
}

#[tokio::test]
async fn bad_requests_get_one_json_error_shape_and_change_nothing() {
    let world = World::new().await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (
            app.admin(Method::POST, "/v1/businesses").body("{not json"),
            400,
        ),
        (
            app.admin(Method::POST, "/v1/businesses")
                .json(&json!({"name": "x"})),
            400,
        ),
        (
            app.admin(Method::POST, "/v1/businesses")
                .json(&json!({"name": "x", "business_type": "saas", "admin": true})),
            400,
        ),
        (
            app.admin(Method::POST, "/v1/businesses")
                .json(&json!({"name": "", "business_type": "saas"})),
            400,
        ),
        (
            app.admin(Method::POST, "/v1/businesses")
                .json(&json!({"name": "x", "business_type": "DROP TABLE"})),
            400,
        ),
        (
            app.admin(Method::POST, "/v1/businesses")
                .body(vec![b'a'; 70 * 1024]),
            413,
        ),
        (
            app.admin(Method::POST, "/v1/businesses")
                .body(vec![0xff, 0xfe, 0x00]),
            400,
        ),
        (
            app.admin(Method::POST, "/v1/businesses")
                .header("idempotency-key", "x".repeat(300))
                .json(&json!({"name": "x", "business_type": "saas"})),
            400,
        ),
        (app.admin(Method::GET, "/v1/businesses?limit=0"), 400),
        (app.admin(Method::GET, "/v1/businesses?limit=abc"), 400),
        (
            app.admin(Method::GET, "/v1/businesses?status=sleeping"),
            400,
        ),
        (
            app.admin(Method::GET, "/v1/businesses?cursor=%27%3B--"),
            400,
        ),
        (app.admin(Method::GET, "/v1/businesses/..%2F..%2Fetc"), 404),
        (
            app.admin(Method::GET, "/v1/businesses/no-such-business"),
            404,
        ),
        (
            app.admin(
                Method::DELETE,
                &format!("/v1/businesses/x?reason={}", "r".repeat(300)),
            ),
            400,
        ),
        (app.admin(Method::GET, "/v1/nothing-here"), 404),
        (app.admin(Method::PUT, "/v1/revenue"), 405),
    ];
    for (req, want) in cases {
        let r = req.send().await.unwrap();
        assert!(r.headers().contains_key("x-request-id"));
        let (status, v) = body(r).await;
        assert_eq!(status, want, "{v}");
        assert!(
            v["error"]["code"].is_string() && v["request_id"].is_string(),
            "{v}"
        );
    }
    assert!(world
        .service
        .store()
        .list_businesses(&Default::default())
        .await
        .unwrap()
        .is_empty());
    assert!(world.objects("customer").is_empty());
}

#[tokio::test]
async fn businesses_are_shown_listed_by_page_and_taken_down() {
    let world = World::new().await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (s, v) = body(
            app.admin(Method::POST, "/v1/businesses")
                .json(&json!({"name": format!("B{i}"), "business_type": "api"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 201);
        ids.push(v["business_id"].as_str().unwrap().to_owned());
    }
    let (_, shown) = body(
        app.admin(Method::GET, &format!("/v1/businesses/{}", ids[0]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(shown["name"], "B0");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/businesses?limit=2&cursor={c}"),
            None => "/v1/businesses?limit=2".into(),
        };
        let (_, page) = body(app.admin(Method::GET, &path).send().await.unwrap()).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["business_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want, "every business exactly once across pages");

    let (s, summary) = body(
        app.admin(
            Method::DELETE,
            &format!("/v1/businesses/{}?reason=api", ids[1]),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            summary["status"].as_str(),
            summary["stripe"].as_str(),
            summary["reason"].as_str()
        ),
        (Some("success"), Some("cancelled"), Some("api"))
    );
    let (_, again) = body(
        app.admin(Method::DELETE, &format!("/v1/businesses/{}", ids[1]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again["status"], "already_taken_down");
    let (s, missing) = body(
        app.admin(Method::DELETE, "/v1/businesses/unknown-id")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, missing["status"].as_str()), (404, Some("not_found")));
    let (_, down) = body(
        app.admin(Method::GET, "/v1/businesses?status=taken_down")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(down["data"].as_array().unwrap().len(), 1);

    let (s, link) = body(
        app.admin(Method::POST, &format!("/v1/businesses/{}/checkout", ids[0]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{link}");
    assert!(link["url"].as_str().unwrap().starts_with("http"));
    let (_, revenue) = body(app.admin(Method::GET, "/v1/revenue").send().await.unwrap()).await;
    assert!(revenue["mrr"].is_array() && revenue["totals"].is_object());
}

#[tokio::test]
async fn health_reports_every_field_and_no_secret() {
    let world = World::new().await;
    let app = App::start(
        &world,
        &[ADMIN_TOKEN],
        &["whsec_health_secret".to_owned()],
        None,
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v = loop {
        let (status, v) = body(app.client.get(app.url("/health")).send().await.unwrap()).await;
        assert_eq!(status, 200);
        if v["catalog"] == "verified" || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(v["status"], "ok");
    assert_eq!(v["stripe_ready"], true);
    assert_eq!(v["stripe"], "ok");
    assert_eq!(v["stripe_mode"], "test");
    assert_eq!(v["stripe_key_is_test"], true);
    assert_eq!(v["database"], "ok");
    assert_eq!(v["database_kind"], "sqlite");
    assert_eq!(v["catalog"], "verified");
    assert_eq!(v["webhook_secret_configured"], true);
    assert_eq!(v["billing_portal"], "not_configured", "no link secret here");
    assert!(v["version"].is_string());
    let text = v.to_string();
    for secret in [common::KEY, "whsec_health_secret", ADMIN_TOKEN] {
        assert!(!text.contains(secret));
    }
}

#[tokio::test]
async fn metrics_export_every_spec_series_and_no_secret() {
    let world = World::new().await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    app.admin(Method::POST, "/v1/businesses")
        .json(&json!({"name": "M", "business_type": "saas"}))
        .send()
        .await
        .unwrap();
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for name in [
        "genesis_meta_agent_stripe_subscriptions_total",
        "genesis_meta_agent_stripe_revenue_total_usd",
        "genesis_meta_agent_takedowns_total",
        "genesis_meta_agent_businesses_created_total",
        "genesis_billing_mrr_usd",
        "genesis_billing_subscriptions",
        "genesis_billing_stripe_request_duration_seconds",
        "genesis_billing_stripe_retries_total",
        "genesis_billing_stripe_rate_limited_total",
        "genesis_billing_webhook_events_total",
        "genesis_billing_webhook_rejected_total",
        "genesis_billing_webhook_apply_lag_seconds",
        "genesis_billing_reconcile_drift_total",
        "genesis_billing_build_info",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    assert!(
        text.contains("genesis_meta_agent_stripe_subscriptions_total{status=\"success\"} 1"),
        "{text}"
    );
    assert!(text.contains("genesis_meta_agent_businesses_created_total{business_type=\"saas\",status=\"provisioned\"} 1"));
    assert!(text.contains("genesis_billing_subscriptions{status=\"incomplete\"} 1"));
    assert!(!text.contains(common::KEY));
}

#[tokio::test]
async fn the_openapi_document_is_served_and_names_every_admin_route() {
    let world = World::new().await;
    let app = App::start(&world, &[], &[], None).await;
    let doc = common::json_of(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/v1/businesses",
        "/v1/businesses/{id}",
        "/v1/businesses/{id}/checkout",
        "/v1/businesses/{id}/manage-link",
        "/v1/revenue",
        "/health",
        "/billing/manage",
        "/billing/manage/done",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
}

#[tokio::test]
async fn concurrent_scrapes_all_see_a_change_another_replica_just_made() {
    let world = World::new().await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    let id = app.create("Gauge", "saas").await;
    let scrape = |app: &App| {
        let req = app.client.get(app.url("/metrics"));
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let first = scrape(&app).await;
    assert!(
        first.contains("genesis_billing_subscriptions{status=\"incomplete\"} 1\n"),
        "{first}"
    );
    assert!(!first.contains("genesis_billing_mrr_usd{"), "{first}");

    // Another replica on the same database records the subscription as paid.
    let other = world.second_service().await;
    other
        .store()
        .set_subscription(
            &id,
            &genesis_billing::store::SubscriptionRecord {
                customer_id: None,
                amount_cents: 500,
                interval: "month",
                subscription_id: "sub_from_the_other_replica",
                status: "active",
                lookup_key: "saas_monthly",
                price_id: "price_other",
                monthly_price_cents: 900,
                currency: "usd",
                state_at: genesis_billing::store::now(),
            },
        )
        .await
        .unwrap();
    let mut scrapes = tokio::task::JoinSet::new();
    for _ in 0..16 {
        scrapes.spawn(scrape(&app));
    }
    while let Some(text) = scrapes.join_next().await {
        let text = text.unwrap();
        assert!(
            text.contains("genesis_billing_subscriptions{status=\"active\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("status=\"incomplete\"} "), "{text}");
        assert!(
            text.contains("genesis_billing_mrr_usd{business_type=\"saas\",currency=\"usd\"} 9\n"),
            "{text}"
        );
    }
    let (status, revenue) = body(app.admin(Method::GET, "/v1/revenue").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(revenue["totals"]["usd"]["active_cents"], 900, "{revenue}");
}
