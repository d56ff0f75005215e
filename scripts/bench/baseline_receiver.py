"""Baseline for the webhook throughput benchmark: a minimal Stripe webhook receiver built the way the first
version proposed it. FastAPI under uvicorn, the official `stripe` SDK's `stripe.Webhook.construct_event`
(default tolerance, 300 s), and one SQLite insert plus one commit per event on a single plain `sqlite3`
connection in the default journal mode, before the 2xx.

Run by crates/genesis-billing/benches/webhook_throughput/ (targets.rs) as
    BASELINE_DB=/tmp/x/baseline.db STRIPE_WEBHOOK_SECRET=whsec_... \
        python3 -m uvicorn baseline_receiver:app --app-dir scripts/bench --host 127.0.0.1 --port PORT --workers 1
Routes: POST /webhook (the receiver), GET /health (readiness: 200 once the database is open).

The handler is `async def` and calls sqlite3 directly, so requests are handled one at a time on the event loop:
each insert is committed in its own transaction before its 2xx. (`check_same_thread=False` is kept as the first
version had it; with this handler the connection is only ever used from the event loop's thread.)
"""

import os
import sqlite3

import stripe
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SECRET = os.environ["STRIPE_WEBHOOK_SECRET"]
DB_PATH = os.environ["BASELINE_DB"]

db = sqlite3.connect(DB_PATH, check_same_thread=False)
db.execute(
    "CREATE TABLE IF NOT EXISTS stripe_event ("
    " id TEXT PRIMARY KEY, type TEXT NOT NULL, created INTEGER NOT NULL, payload TEXT NOT NULL)"
)
db.commit()

app = FastAPI()


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/webhook")
async def webhook(request: Request):
    payload = await request.body()
    sig_header = request.headers.get("stripe-signature", "")
    try:
        event = stripe.Webhook.construct_event(payload, sig_header, SECRET)
    except (ValueError, stripe.SignatureVerificationError):
        return JSONResponse({"error": "invalid signature or payload"}, status_code=400)
    db.execute(
        "INSERT OR IGNORE INTO stripe_event (id, type, created, payload) VALUES (?, ?, ?, ?)",
        (event["id"], event["type"], event["created"], payload.decode("utf-8")),
    )
    db.commit()
    return {"received": True}
