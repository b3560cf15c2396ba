#!/usr/bin/env python3
"""A real SMTP server for the email tests (aiosmtpd), never part of the product.

Listens on 127.0.0.1 (port 0 = a free one, written to --port-file once listening) and keeps
every accepted message twice in DIR: the raw message in DIR/maildir (a Maildir: new/), and a
decoded copy in DIR/json/NNNN.json (envelope sender and recipients, From, To, Subject, the
text/plain and text/html parts), so tests need no MIME parser.

  --starttls CERT KEY   offer STARTTLS (and require it before MAIL)
  --smtps CERT KEY      implicit TLS from the first byte
  --auth USER:PASS      require AUTH PLAIN/LOGIN with these credentials (after TLS if any)

Install aiosmtpd with: python3 -m pip install aiosmtpd (scripts/test.sh does it).
"""

import argparse
import asyncio
import email
import email.policy
import json
import mailbox
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    def __init__(self, directory):
        self.dir = directory
        self.maildir = mailbox.Maildir(os.path.join(directory, "maildir"), create=True)
        self.json_dir = os.path.join(directory, "json")
        os.makedirs(self.json_dir, exist_ok=True)
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        self.maildir.add(raw)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = {}
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype in ("text/plain", "text/html") and ctype not in parts:
                parts[ctype] = part.get_content()
        self.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg.get("From", "")),
            "to": str(msg.get("To", "")),
            "subject": str(msg.get("Subject", "")),
            "content_type": msg.get_content_type(),
            "text": parts.get("text/plain", ""),
            "html": parts.get("text/html", ""),
        }
        path = os.path.join(self.json_dir, "%04d.json" % self.count)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
        os.rename(path + ".tmp", path)
        return "250 OK"


def tls_context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--smtps", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--auth", metavar="USER:PASS")
    a = p.parse_args()

    handler = Sink(a.dir)
    starttls = tls_context(*a.starttls) if a.starttls else None
    smtps = tls_context(*a.smtps) if a.smtps else None
    user, _, password = (a.auth or "").partition(":")

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        # handled=False: aiosmtpd answers 535 itself on failure.
        return AuthResult(success=ok, handled=False)

    def factory():
        kwargs = {}
        if starttls:
            kwargs.update(tls_context=starttls, require_starttls=True)
        if a.auth:
            kwargs.update(
                authenticator=authenticator,
                auth_required=True,
                # With implicit TLS aiosmtpd does not see the TLS layer itself.
                auth_require_tls=bool(starttls),
            )
        return SMTP(handler, hostname="smtp-sink.test", **kwargs)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(factory, "127.0.0.1", a.port, ssl=smtps)
    )
    port = server.sockets[0].getsockname()[1]
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(a.port_file + ".tmp", a.port_file)
    print("smtp-sink listening on 127.0.0.1:%d, mail in %s" % (port, a.dir), file=sys.stderr)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
