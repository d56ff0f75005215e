#!/usr/bin/env python3
"""Extracts, from the official Node SDK's type declarations, the fields Stripe always sends on each object the
simulator serves, and writes them as the compact JSON fixture `endive_required_fields.json`.

A field declared without `?` (`foo: string | null`) is always present, maybe null; `foo?: ...` is optional or
only there when expanded (its nested shape is still recorded, and checked when the field is sent). Nested objects declared in the object's own namespace (`Subscription.AutomaticTax`)
are followed all the way down; `ApiList<X>` and shared types (`Address`) become references.

Regenerate (needs the npm registry; CI uses the committed fixture and needs no network):

    cd /tmp && npm pack stripe@23.0.0 && mkdir -p stripe23 && tar xzf stripe-23.0.0.tgz -C stripe23
    python3 crates/stripe-sim/conformance/extract_required_fields.py /tmp/stripe23/package \\
        > crates/stripe-sim/conformance/endive_required_fields.json
"""

import json
import re
import sys
from pathlib import Path

# (definition name, file under cjs/, top-level interface or namespace path) for every object the simulator serves.
ROOTS = [
    ("Customer", "resources/Customers.d.ts", "Customer"),
    ("DeletedCustomer", "resources/Customers.d.ts", "DeletedCustomer"),
    ("Product", "resources/Products.d.ts", "Product"),
    ("DeletedProduct", "resources/Products.d.ts", "DeletedProduct"),
    ("Price", "resources/Prices.d.ts", "Price"),
    ("Plan", "resources/Plans.d.ts", "Plan"),
    ("Subscription", "resources/Subscriptions.d.ts", "Subscription"),
    ("SubscriptionItem", "resources/SubscriptionItems.d.ts", "SubscriptionItem"),
    ("Invoice", "resources/Invoices.d.ts", "Invoice"),
    ("InvoiceLineItem", "resources/InvoiceLineItems.d.ts", "InvoiceLineItem"),
    ("InvoicePayment", "resources/InvoicePayments.d.ts", "InvoicePayment"),
    ("PaymentMethod", "resources/PaymentMethods.d.ts", "PaymentMethod"),
    ("PaymentIntent", "resources/PaymentIntents.d.ts", "PaymentIntent"),
    ("Charge", "resources/Charges.d.ts", "Charge"),
    ("SetupIntent", "resources/SetupIntents.d.ts", "SetupIntent"),
    ("Checkout.Session", "resources/Checkout/Sessions.d.ts", "Session"),
    ("LineItem", "resources/LineItems.d.ts", "LineItem"),
    ("Event", "resources/Events.d.ts", "EventBase"),
    ("WebhookEndpoint", "resources/WebhookEndpoints.d.ts", "WebhookEndpoint"),
    ("DeletedWebhookEndpoint", "resources/WebhookEndpoints.d.ts", "DeletedWebhookEndpoint"),
    ("TestHelpers.TestClock", "resources/TestHelpers/TestClocks.d.ts", "TestClock"),
    ("TestHelpers.DeletedTestClock", "resources/TestHelpers/TestClocks.d.ts", "DeletedTestClock"),
    ("Address", "shared.d.ts", "Address"),
    ("BillingPortal.Configuration", "resources/BillingPortal/Configurations.d.ts", "Configuration"),
    ("BillingPortal.Session", "resources/BillingPortal/Sessions.d.ts", "Session"),
]
# Top-level names a field's type may name, to the definition name above (the rest, like `Metadata`, is not checked).
REFS = {"Address": "Address"}
ROOT_NAMES = {name.split(".")[-1]: name for name, _, _ in ROOTS}
ROOT_NAMES["Session"] = "Checkout.Session"

MEMBER = re.compile(r"^(\s*)(\w+)(\?)?: (.*);$")
OPEN = re.compile(r"^(\s*)(?:export )?(?:declare )?(interface|namespace) (\w+)(?: extends [\w.<>, ]+)? \{$")


def parse(text):
    """Every interface in a declaration file, by dotted path, as a list of (field, optional, type)."""
    out = {}
    stack = []  # (kind, name, indent)
    in_comment = False
    for line in text.splitlines():
        s = line.strip()
        if in_comment:
            in_comment = "*/" not in s
            continue
        if s.startswith("/**") or s.startswith("/*"):
            in_comment = "*/" not in s
            continue
        m = OPEN.match(line)
        if m:
            stack.append((m.group(2), m.group(3), len(m.group(1))))
            if m.group(2) == "interface":
                out.setdefault(".".join(n for _, n, _ in stack), [])
            continue
        if s == "}" and stack:
            indent = len(line) - len(line.lstrip())
            if indent == stack[-1][2]:
                stack.pop()
            continue
        if stack and stack[-1][0] == "interface":
            mm = MEMBER.match(line)
            if mm and len(mm.group(1)) == stack[-1][2] + 4:
                path = ".".join(n for _, n, _ in stack)
                out[path].append((mm.group(2), mm.group(3) == "?", mm.group(4)))
        elif s.endswith("{") and not OPEN.match(line):
            # An inline object type or class body: track its braces so closing lines pair up.
            indent = len(line) - len(line.lstrip())
            stack.append(("other", "", indent))
    return out


def resolve(ifaces, scope, name):
    """The dotted path of `name` seen from inside `scope`, innermost namespace first, or None."""
    parts = scope.split(".")
    for i in range(len(parts), -1, -1):
        cand = ".".join(parts[:i] + [name])
        if cand in ifaces:
            return cand
    return None


def shape(ifaces, path, seen):
    """The required fields of one interface, with the nested shapes of its object-typed fields."""
    required = []
    nested = {}
    for field, optional, typ in ifaces[path]:
        if not optional:
            required.append(field)
        # Optional fields get a nested shape too: when sent (`card` on a card payment), they must be whole.
        parts = [p.strip() for p in typ.split("|") if p.strip() != "null"]
        if "string" in parts and len(parts) > 1:
            continue  # `string | Customer`: an expandable reference, an id unless expanded.
        parts = [p for p in parts if p not in ("string", "number", "boolean") and not p.startswith("'")]
        if len(parts) != 1:
            continue
        t = parts[0]
        m = re.fullmatch(r"(?:Array<(.+)>|(.+)\[\])", t)
        if m:
            t = m.group(1) or m.group(2)
        lm = re.fullmatch(r"ApiList<(?:Stripe\.)?([\w.]+)>", t)
        if lm:
            target = ROOT_NAMES.get(lm.group(1))
            if target:
                nested[field] = {"list": target}
            continue
        t = t.removeprefix("Stripe.")
        if t in REFS:
            nested[field] = {"ref": REFS[t]}
            continue
        if t in ROOT_NAMES and "." not in t:
            nested[field] = {"ref": ROOT_NAMES[t]}  # another served object, embedded whole (`plan: Plan`)
            continue
        target = resolve(ifaces, path, t)
        if target and target not in seen and target.count(".") >= 1:
            sub = shape(ifaces, target, seen | {target})
            if sub["required"]:
                nested[field] = sub
    out = {"required": required}
    if nested:
        out["nested"] = nested
    return out


def main():
    pkg = Path(sys.argv[1])
    version = re.search(r"ApiVersion = '([^']+)'", (pkg / "cjs/apiVersion.js").read_text()).group(1)
    sdk = json.loads((pkg / "package.json").read_text())["version"]
    defs = {}
    for name, file, iface in ROOTS:
        ifaces = parse((pkg / "cjs" / file).read_text())
        if iface not in ifaces:
            sys.exit(f"{iface} not found in {file}")
        defs[name] = shape(ifaces, iface, {iface})
    defs["ApiList"] = {"required": ["object", "data", "has_more", "url"]}
    defs["ApiSearchResult"] = {"required": ["object", "data", "has_more", "url", "next_page"]}
    doc = {
        "_comment": "Generated by extract_required_fields.py from the stripe npm package's cjs/**/*.d.ts; see that script to regenerate.",
        "sdk": f"stripe@{sdk}",
        "api_version": version,
        "definitions": defs,
    }
    # One definition a line: compact, and a regenerated fixture diffs per object.
    lines = [f' "{k}": {json.dumps(v)}' for k, v in doc.items() if k != "definitions"]
    body = ",\n".join(f'  "{k}": {json.dumps(v)}' for k, v in defs.items())
    sys.stdout.write("{\n" + ",\n".join(lines) + ',\n "definitions": {\n' + body + "\n }\n}\n")


if __name__ == "__main__":
    main()
