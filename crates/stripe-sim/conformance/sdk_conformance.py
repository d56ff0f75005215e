#!/usr/bin/env python3
"""Conformance of stripe-sim against Stripe's official Python SDK.

Starts the simulator binary on a free port, points the SDK at it, and walks every resource the simulator
claims to support, including the SDK's error classes, auto-pagination, search, test clocks, checkout
completion, the billing portal and verification of a real webhook delivery with stripe.Webhook.construct_event.

Usage: sdk_conformance.py [PATH_TO_STRIPE_SIM]   (or STRIPE_SIM_BIN; default target/debug/stripe-sim)
Exits non-zero with a message naming the first failed check.
"""

import http.server
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

import stripe

API_VERSION = "2026-09-30.endive"
KEY = "sk_test_conformance_0123456789"
CHECKS = []


def check(name):
    def wrap(fn):
        CHECKS.append((name, fn))
        return fn
    return wrap


class Failure(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise Failure(message)


def expect_error(cls, fn, **attrs):
    try:
        fn()
    except cls as e:
        for k, v in attrs.items():
            got = getattr(e, k, None)
            expect(got == v, f"{cls.__name__}.{k} was {got!r}, expected {v!r}")
        return e
    except stripe.StripeError as e:
        raise Failure(f"expected {cls.__name__}, got {type(e).__name__}: {e}")
    raise Failure(f"expected {cls.__name__}, no error raised")


class Sim:
    def __init__(self, binary):
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--rate-limit", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = self.proc.stdout.readline().strip()
        prefix = "stripe-sim listening on "
        if not line.startswith(prefix):
            self.proc.kill()
            raise Failure(f"unexpected first line from stripe-sim: {line!r}")
        self.base = line[len(prefix):]

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {KEY}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Receiver:
    """A local webhook endpoint that records raw bodies and signature headers."""

    def __init__(self):
        self.deliveries = queue.Queue()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                outer.deliveries.put((self.headers.get("Stripe-Signature"), body))
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    # The simulator is stopped at the end of the run, possibly mid-delivery.
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, event_type, timeout=10):
        deadline = time.time() + timeout
        seen = []
        while time.time() < deadline:
            try:
                sig, body = self.deliveries.get(timeout=0.2)
            except queue.Empty:
                continue
            payload = json.loads(body)
            seen.append(payload["type"])
            if payload["type"] == event_type:
                return sig, body
        raise Failure(f"no {event_type} delivery within {timeout}s (saw {seen})")


CTX = {}


def monthly_price(amount, lookup_key=None, transfer=False):
    params = dict(currency="usd", unit_amount=amount, recurring={"interval": "month"}, product=CTX["product"].id)
    if lookup_key:
        params["lookup_key"] = lookup_key
    if transfer:
        params["transfer_lookup_key"] = True
    return stripe.Price.create(**params)


@check("webhook endpoint creation returns a whsec_ secret once")
def _():
    we = stripe.WebhookEndpoint.create(url=CTX["receiver"].url, enabled_events=["*"])
    expect(we.secret.startswith("whsec_"), "secret missing")
    expect(we.object == "webhook_endpoint", "wrong object")
    again = stripe.WebhookEndpoint.retrieve(we.id)
    expect("secret" not in again, "secret returned again")
    CTX["whsec"] = we.secret
    CTX["endpoint"] = we.id
    expect(any(e.id == we.id for e in stripe.WebhookEndpoint.list().auto_paging_iter()), "endpoint not listed")


@check("products and prices with lookup keys, lookup_keys[] listing and transfer_lookup_key")
def _():
    CTX["product"] = stripe.Product.create(name="Genesis SaaS", metadata={"kind": "saas"})
    expect(CTX["product"].id.startswith("prod_"), "product id prefix")
    p1 = monthly_price(500, "conformance_saas_monthly")
    expect(p1.id.startswith("price_") and p1.recurring.interval == "month", "price shape")
    expect_error(stripe.InvalidRequestError, lambda: monthly_price(600, "conformance_saas_monthly"))
    p2 = monthly_price(600, "conformance_saas_monthly", transfer=True)
    found = stripe.Price.list(lookup_keys=["conformance_saas_monthly"], expand=["data.product"])
    expect([p.id for p in found.data] == [p2.id], f"lookup_keys listing returned {[p.id for p in found.data]}")
    expect(found.data[0].product.name == "Genesis SaaS", "expand data.product")
    expect(stripe.Price.retrieve(p1.id).lookup_key is None, "old price kept the lookup key")
    CTX["price"] = p2


@check("customers: create, retrieve, update, search, auto-paging list")
def _():
    c = stripe.Customer.create(name="Biz", email="biz@example.com", metadata={"business_id": "conf-1"})
    expect(c.id.startswith("cus_") and c.livemode is False, "customer shape")
    expect(stripe.Customer.retrieve(c.id).metadata["business_id"] == "conf-1", "metadata")
    u = stripe.Customer.modify(c.id, description="updated", metadata={"extra": "1"})
    expect(u.description == "updated" and u.metadata["business_id"] == "conf-1", "update merges metadata")
    res = stripe.Customer.search(query="metadata['business_id']:'conf-1'")
    expect(res.object == "search_result" and [x.id for x in res.data] == [c.id], "search result")
    ids = {stripe.Customer.create(email=f"page{i}@example.com").id for i in range(23)}
    listed = [x.id for x in stripe.Customer.list(limit=5).auto_paging_iter()]
    expect(ids <= set(listed), "auto_paging_iter missed customers")
    expect(len(listed) == len(set(listed)), "auto_paging_iter repeated customers")
    searched = [x.id for x in stripe.Customer.search(query="email~'page'", limit=4).auto_paging_iter()]
    expect(set(searched) == ids, f"search pagination found {len(searched)} of {len(ids)}")
    CTX["customer"] = c


@check("error classes: InvalidRequestError, IdempotencyError, CardError, AuthenticationError, RateLimitError")
def _():
    e = expect_error(stripe.InvalidRequestError, lambda: stripe.Customer.retrieve("cus_doesnotexist"), http_status=404, code="resource_missing")
    expect(e.param == "id", f"param {e.param}")
    e = expect_error(stripe.InvalidRequestError, lambda: stripe.Customer.create(favourite_colour="red"), code="parameter_unknown")
    expect(e.param == "favourite_colour", "unknown param named")
    e = expect_error(
        stripe.InvalidRequestError,
        lambda: stripe.Subscription.create(customer=CTX["customer"].id, items=[{"price_data": {"currency": "usd", "product": CTX["product"].id, "recurring": {"interval": "month"}, "unit_amount": 500, "product_data": {"name": "x"}}}]),
        code="parameter_unknown",
    )
    expect(e.param == "items[0][price_data][product_data]", f"param {e.param}")
    stripe.Customer.create(name="idem", idempotency_key="conf-idem-1")
    expect_error(stripe.IdempotencyError, lambda: stripe.Customer.create(name="other", idempotency_key="conf-idem-1"))
    expect_error(stripe.CardError, lambda: stripe.PaymentMethod.attach("pm_card_visa_chargeDeclined", customer=CTX["customer"].id), code="card_declined")
    expect_error(stripe.AuthenticationError, lambda: stripe.Customer.list(api_key="sk_test_"))
    status, _ = CTX["sim"].control("POST", "/_sim/rate_limit", {"per_second": 1})
    expect(status == 200, "rate limit control")
    try:
        def burst():
            for _ in range(20):
                stripe.Customer.list(limit=1)
        e = expect_error(stripe.RateLimitError, burst, http_status=429)
        expect(e.json_body["error"]["code"] == "rate_limit", f"429 body {e.json_body}")
    finally:
        CTX["sim"].control("POST", "/_sim/rate_limit", {"per_second": 0})


@check("idempotent replay returns the same object")
def _():
    a = stripe.Customer.create(name="replay", idempotency_key="conf-idem-2")
    b = stripe.Customer.create(name="replay", idempotency_key="conf-idem-2")
    expect(a.id == b.id, "replay created a second customer")
    expect(b.last_response.headers.get("Idempotent-Replayed") == "true", "Idempotent-Replayed header")


@check("default_incomplete subscription, expanded invoice payments, pay, active")
def _():
    c = stripe.Customer.create(email="sub@example.com", metadata={"business_id": "conf-sub"})
    s = stripe.Subscription.create(
        customer=c.id, items=[{"price": CTX["price"].id}], payment_behavior="default_incomplete",
        payment_settings={"save_default_payment_method": "on_subscription"},
        metadata={"business_id": "conf-sub"}, expand=["latest_invoice.payments", "latest_invoice.confirmation_secret"],
    )
    expect(s.status == "incomplete", f"status {s.status}")
    expect("current_period_end" not in s and s["items"].data[0].current_period_end > 0, "periods live on items at endive")
    inv = s.latest_invoice
    expect("payment_intent" not in inv and inv.payments.data[0].payment.type == "payment_intent", "invoice payments")
    expect(inv.parent.subscription_details.subscription == s.id, "invoice parent")
    expect(inv.confirmation_secret.client_secret, "confirmation secret")
    expect_error(stripe.CardError, lambda: stripe.Invoice.pay(inv.id, payment_method="pm_card_chargeCustomerFail"))
    paid = stripe.Invoice.pay(inv.id, payment_method="pm_card_visa")
    expect(paid.status == "paid", f"invoice {paid.status}")
    s = stripe.Subscription.retrieve(s.id)
    expect(s.status == "active" and s.default_payment_method, "active with saved payment method")
    found = stripe.Subscription.search(query="metadata['business_id']:'conf-sub'")
    expect([x.id for x in found.data] == [s.id], "subscription search")
    CTX["sub"] = s


@check("allow_incomplete charges the default card; error_if_incomplete is a CardError")
def _():
    good = stripe.Customer.create(payment_method="pm_card_visa", invoice_settings={"default_payment_method": "pm_card_visa"})
    s = stripe.Subscription.create(customer=good.id, items=[{"price": CTX["price"].id}])
    expect(s.status == "active", f"status {s.status}")
    bad = stripe.Customer.create(payment_method="pm_card_chargeCustomerFail", invoice_settings={"default_payment_method": "pm_card_chargeCustomerFail"})
    expect_error(stripe.CardError, lambda: stripe.Subscription.create(customer=bad.id, items=[{"price": CTX["price"].id}], payment_behavior="error_if_incomplete"))
    expect(stripe.Subscription.create(customer=bad.id, items=[{"price": CTX["price"].id}]).status == "incomplete", "allow_incomplete failure")


@check("cancel, list with status=all, canceled hidden by default")
def _():
    s = CTX["sub"]
    c = stripe.Subscription.cancel(s.id)
    expect(c.status == "canceled" and c.canceled_at, "canceled")
    default = [x.id for x in stripe.Subscription.list(customer=s.customer).auto_paging_iter()]
    expect(s.id not in default, "canceled subscription listed by default")
    every = [x.id for x in stripe.Subscription.list(customer=s.customer, status="all").auto_paging_iter()]
    expect(s.id in every, "status=all misses it")
    expect_error(stripe.InvalidRequestError, lambda: stripe.Subscription.cancel(s.id), http_status=404)


@check("test clocks: trial then renewal, failing card goes past_due")
def _():
    start = int(time.time()) // 86400 * 86400
    clock = stripe.test_helpers.TestClock.create(frozen_time=start, name="conformance")
    expect(clock.id.startswith("clock_") and clock.status == "ready", "clock shape")
    good = stripe.Customer.create(test_clock=clock.id, payment_method="pm_card_visa", invoice_settings={"default_payment_method": "pm_card_visa"})
    bad = stripe.Customer.create(test_clock=clock.id, payment_method="pm_card_chargeCustomerFail", invoice_settings={"default_payment_method": "pm_card_chargeCustomerFail"})
    trial = stripe.Subscription.create(customer=good.id, items=[{"price": CTX["price"].id}], trial_period_days=7)
    expect(trial.status == "trialing", "trialing")
    failing = stripe.Subscription.create(customer=bad.id, items=[{"price": CTX["price"].id}], trial_period_days=3)

    def advance(to):
        adv = stripe.test_helpers.TestClock.advance(clock.id, frozen_time=to)
        expect(adv.status in ("advancing", "ready"), "advance status")
        deadline = time.time() + 10
        while stripe.test_helpers.TestClock.retrieve(clock.id).status != "ready":
            expect(time.time() < deadline, "clock never ready")
            time.sleep(0.05)

    advance(start + 4 * 86400)
    expect(stripe.Subscription.retrieve(trial.id).status == "trialing", "still trialing")
    expect(stripe.Subscription.retrieve(failing.id).status == "past_due", "failing renewal past_due")
    advance(start + 10 * 86400)
    expect(stripe.Subscription.retrieve(trial.id).status == "active", "trial converted")
    invs = stripe.Invoice.list(subscription=trial.id, status="paid")
    expect(len(invs.data) == 2, f"{len(invs.data)} paid invoices")
    clocks = [x.id for x in stripe.test_helpers.TestClock.list().auto_paging_iter()]
    expect(clock.id in clocks, "clock listed")
    stripe.test_helpers.TestClock.delete(clock.id)


@check("payment intents: create, confirm, cancel with a reason")
def _():
    pi = stripe.PaymentIntent.create(amount=500, currency="usd")
    expect(pi.status == "requires_payment_method", pi.status)
    c = stripe.PaymentIntent.cancel(pi.id, cancellation_reason="abandoned")
    expect(c.status == "canceled" and c.cancellation_reason == "abandoned", "cancel")
    ok = stripe.PaymentIntent.create(amount=700, currency="usd", payment_method="pm_card_visa")
    ok = stripe.PaymentIntent.confirm(ok.id)
    expect(ok.status == "succeeded", ok.status)
    expect_error(stripe.InvalidRequestError, lambda: stripe.PaymentIntent.cancel(ok.id), code="payment_intent_unexpected_state")


@check("checkout setup session completes and its webhook verifies with construct_event")
def _():
    c = stripe.Customer.create(email="checkout@example.com")
    cs = stripe.checkout.Session.create(mode="setup", customer=c.id, currency="usd", success_url="https://example.com/ok", cancel_url="https://example.com/no", metadata={"business_id": "conf-co"})
    expect(cs.url and cs.status == "open", "open session with url")
    status, body = CTX["sim"].control("POST", f"/_sim/checkout/sessions/{cs.id}/complete", {"payment_method": "pm_card_visa_chargeDeclined"})
    expect(status == 402 and body["error"]["type"] == "card_error", f"declined completion gave {status}")
    status, body = CTX["sim"].control("POST", f"/_sim/checkout/sessions/{cs.id}/complete", {})
    expect(status == 200 and body["status"] == "complete", f"completion gave {status} {body}")
    sig, raw = CTX["receiver"].wait_for("checkout.session.completed")
    event = stripe.Webhook.construct_event(raw.decode(), sig, CTX["whsec"])
    expect(event.type == "checkout.session.completed", event.type)
    expect(event.data.object.id == cs.id and event.data.object.setup_intent.startswith("seti_"), "event object")
    try:
        stripe.Webhook.construct_event(raw.decode(), sig, "whsec_wrong")
        raise Failure("a wrong secret verified")
    except stripe.SignatureVerificationError:
        pass
    pms = stripe.Customer.list_payment_methods(c.id)
    expect(len(pms.data) == 1, "payment method attached")
    other = stripe.checkout.Session.create(mode="setup", customer=c.id, currency="usd", success_url="https://example.com/ok")
    expect(stripe.checkout.Session.expire(other.id).status == "expired", "expire")


@check("billing portal: configurations create/retrieve/modify/list, sessions with flows, portal steps")
def _():
    cfg = stripe.billing_portal.Configuration.create(
        business_profile={"headline": "Conformance"},
        default_return_url="https://example.com/account",
        features={
            "invoice_history": {"enabled": True},
            "payment_method_update": {"enabled": True},
            "subscription_cancel": {"enabled": True, "mode": "immediately", "proration_behavior": "none"},
            "customer_update": {"enabled": True, "allowed_updates": ["email", "address"]},
        },
        metadata={"business_id": "conf-portal"},
    )
    expect(cfg.id.startswith("bpc_") and cfg.object == "billing_portal.configuration", "configuration shape")
    expect(cfg.features.subscription_cancel.mode == "immediately" and cfg.is_default is False, "configuration features")
    got = stripe.billing_portal.Configuration.retrieve(cfg.id)
    expect(got.default_return_url == "https://example.com/account", "retrieve")
    mod = stripe.billing_portal.Configuration.modify(cfg.id, name="Conformance portal")
    expect(mod.name == "Conformance portal", "modify")
    listed = [x.id for x in stripe.billing_portal.Configuration.list(active=True, limit=1).auto_paging_iter()]
    expect(cfg.id in listed, "list active, auto-paging")
    expect_error(stripe.InvalidRequestError, lambda: stripe.billing_portal.Configuration.create(features={"subscription_cancel": {"enabled": True, "mode": "someday"}}), param="features[subscription_cancel][mode]")
    c = stripe.Customer.create(payment_method="pm_card_visa", invoice_settings={"default_payment_method": "pm_card_visa"})
    s = stripe.Subscription.create(customer=c.id, items=[{"price": CTX["price"].id}])
    session = stripe.billing_portal.Session.create(
        customer=c.id, configuration=cfg.id, locale="en",
        flow_data={"type": "subscription_cancel", "subscription_cancel": {"subscription": s.id},
                   "after_completion": {"type": "redirect", "redirect": {"return_url": "https://example.com/done"}}},
    )
    expect(session.id.startswith("bps_") and session.url.startswith(CTX["sim"].base), f"session url {session.url}")
    expect(session.flow.subscription_cancel.subscription == s.id and session.return_url == "https://example.com/account", "session flow")
    expect_error(stripe.InvalidRequestError, lambda: stripe.billing_portal.Session.create(customer="cus_missing"), code="resource_missing", param="customer")
    expect_error(stripe.InvalidRequestError, lambda: stripe.billing_portal.Session.create(customer=c.id, configuration="bpc_missing"), param="configuration")
    default = stripe.billing_portal.Session.create(customer=c.id)
    expect(stripe.billing_portal.Configuration.retrieve(default.configuration).is_default is True, "default configuration")
    with urllib.request.urlopen(session.url, timeout=10) as r:
        expect(r.status == 200 and "text/html" in r.headers.get("Content-Type", ""), "portal page")
    status, body = CTX["sim"].control("POST", f"/_sim/billing_portal/sessions/{session.id}/payment_method", {"payment_method": "pm_card_mastercard"})
    expect(status == 200 and body["payment_method"]["card"]["last4"] == "4444", f"card update gave {status} {body}")
    expect(stripe.Customer.retrieve(c.id).invoice_settings.default_payment_method == body["payment_method"]["id"], "new default card")
    status, body = CTX["sim"].control("POST", f"/_sim/billing_portal/sessions/{session.id}/cancel", {})
    expect(status == 200 and body["status"] == "canceled", f"cancel gave {status} {body}")
    expect(stripe.Subscription.retrieve(s.id).status == "canceled", "canceled in the portal")


@check("events: list by type with created[gte], retrieve, auto-paging")
def _():
    e = stripe.Event.list(type="customer.created", limit=3)
    expect(e.data and all(x.type == "customer.created" for x in e.data), "type filter")
    first = e.data[-1]
    got = stripe.Event.retrieve(first.id)
    expect(got.api_version == API_VERSION and got.data.object.object == "customer", "event shape")
    since = list(stripe.Event.list(created={"gte": first.created}, limit=50).auto_paging_iter())
    expect(any(x.id == first.id for x in since), "created[gte]")


@check("deleted customers retrieve as stubs and their subscriptions are canceled")
def _():
    c = stripe.Customer.create(payment_method="pm_card_visa", invoice_settings={"default_payment_method": "pm_card_visa"})
    s = stripe.Subscription.create(customer=c.id, items=[{"price": CTX["price"].id}])
    d = stripe.Customer.delete(c.id)
    expect(d.deleted is True, "delete response")
    again = stripe.Customer.retrieve(c.id)
    expect(again.to_dict() == {"id": c.id, "object": "customer", "deleted": True}, f"deleted stub {again}")
    expect(stripe.Subscription.retrieve(s.id).status == "canceled", "subscription canceled")


@check("webhook endpoints can be deleted")
def _():
    d = stripe.WebhookEndpoint.delete(CTX["endpoint"])
    expect(d.deleted is True, "deleted")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("STRIPE_SIM_BIN")
    if not binary:
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
        binary = os.path.join(root, "target", "debug", "stripe-sim")
    if not os.path.exists(binary):
        print(f"FAIL: stripe-sim binary not found at {binary} (build it with `cargo build -p stripe-sim`)")
        return 2
    sim = Sim(binary)
    CTX["sim"] = sim
    CTX["receiver"] = Receiver()
    stripe.api_key = KEY
    stripe.api_version = API_VERSION
    stripe.api_base = sim.base
    stripe.max_network_retries = 0
    failed = 0
    try:
        for name, fn in CHECKS:
            try:
                fn()
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - report every failure kind with its check's name
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
                if not isinstance(e, Failure):
                    traceback.print_exc()
                if name.startswith(("webhook endpoint", "products", "customers")):
                    break  # later checks depend on these
    finally:
        sim.stop()
    print(f"{len(CHECKS) - failed} of {len(CHECKS)} checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
