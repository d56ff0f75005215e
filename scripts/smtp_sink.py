#!/usr/bin/env python3
"""A real SMTP server on 127.0.0.1 for genesis-billing's notice tests (aiosmtpd).

Each accepted message is written to DIR/NNNNNN.json (envelope, raw message, AUTH login). It can be told
to answer 451 to the first N messages (--fail-first), 550 to recipients listed one per line in
DIR/reject (read on every RCPT, so a test can change it while the server runs), and to require AUTH
(--auth USER:PASSWORD; plain connection, as to a loopback relay). Prints "PORT <n>" once listening.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    def __init__(self, directory, fail_first):
        self.directory = directory
        self.fail_left = fail_first
        self.count = 0

    def rejected(self):
        try:
            with open(os.path.join(self.directory, "reject"), encoding="utf-8") as f:
                return {line.strip() for line in f if line.strip()}
        except FileNotFoundError:
            return set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rejected():
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.fail_left > 0:
            self.fail_left -= 1
            return "451 4.3.0 try again later"
        self.count += 1
        login = getattr(session, "genesis_login", None)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)

        def part(kind):
            body = msg.get_body((kind,))
            return body.get_content() if body is not None else None

        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "auth_login": login,
            "subject": str(msg["subject"]),
            "message_id": str(msg["message-id"]),
            "to": str(msg["to"]),
            "from": str(msg["from"]),
            "text": part("plain"),
            "html": part("html"),
        }
        path = os.path.join(self.directory, f"{self.count:06}.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, path)
        return "250 Message accepted"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--auth", default=None, help="USER:PASSWORD required")
    args = p.parse_args()
    sink = Sink(args.dir, args.fail_first)
    kwargs = {"hostname": "sink.test", "decode_data": False}
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            if ok:
                session.genesis_login = user
            return AuthResult(success=ok, handled=False)

        kwargs.update(
            authenticator=authenticator, auth_required=True, auth_require_tls=False
        )

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(sink, **kwargs), "127.0.0.1", 0)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
