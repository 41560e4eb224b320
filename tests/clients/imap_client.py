#!/usr/bin/env python3
"""IMAP test client for the mailgate suite (Python 3 stdlib only).

Prints one JSON object as its last stdout line; exit code 0 means the run did what was
asked (including an expected failure), non-zero means it did not.

Modes:
  fetch  login, SELECT INBOX, fetch every message, report size + sha256 of each (default)
  login  login and logout only
  idle   login, SELECT INBOX, IDLE; prints "IDLING" (flushed) once the server accepted
         IDLE, waits (bounded) for an untagged EXISTS, then DONE and LOGOUT
  enable login, then imaplib's enable(--enable) (which checks the capabilities imaplib kept
         from before login), report its answer, LOGOUT

Examples:
  imap_client.py --port 993 --cafile ca.pem --user alice@example.com --auth xoauth2 --token T
  imap_client.py --port 993 --tls implicit --cafile ca.pem --user alice@example.com --password s
  imap_client.py --port 143 --tls starttls --cafile ca.pem --user u --password bad --expect-fail
"""

import argparse
import base64
import hashlib
import imaplib
import json
import re
import socket
import ssl
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


class Client(imaplib.IMAP4):
    """imaplib.IMAP4 with implicit TLS or STARTTLS under an explicit SNI/verification name."""

    def __init__(self, host, port, tls, ctx, server_name, timeout, source=None):
        self._tls_mode = tls
        self._source = source
        self._ctx = ctx
        self._server_name = server_name
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        # --source: bind a loopback source address (127.0.0.2 ...) to play another client.
        source = (self._source, 0) if self._source else None
        sock = socket.create_connection((self.host, self.port), timeout, source_address=source)
        if self._tls_mode == "implicit":
            return self._ctx.wrap_socket(sock, server_hostname=self._server_name)
        return sock

    def starttls_named(self):
        # As imaplib.starttls, but verifying --servername rather than --host.
        typ, dat = self._simple_command("STARTTLS")
        if typ != "OK":
            raise self.error("STARTTLS refused: %r" % dat)
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self._server_name)
        self.file = self.sock.makefile("rb")
        self._tls_established = True
        self._get_capabilities()


def make_ctx(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    return ctx


def connect(args):
    ctx = make_ctx(args.cafile) if args.tls != "none" else None
    m = Client(args.host, args.port, args.tls, ctx, args.servername or args.host, args.timeout,
               args.source)
    if args.tls == "starttls":
        m.starttls_named()
    return m


def oauth_payload(args):
    # XOAUTH2 (Google/Microsoft) and OAUTHBEARER (RFC 7628 section 3.1) initial responses.
    if args.auth == "xoauth2":
        return ("user=%s\x01auth=Bearer %s\x01\x01" % (args.user, args.token)).encode()
    return ("n,a=%s,\x01host=%s\x01port=%d\x01auth=Bearer %s\x01\x01"
            % (args.user, args.host, args.port, args.token)).encode()


def login(m, args):
    if args.auth in ("xoauth2", "oauthbearer"):
        sent = []

        def respond(_challenge):
            # First the token; after a failure the server sends its error JSON as a
            # challenge, answered with an empty response (XOAUTH2) or ^A (OAUTHBEARER).
            if not sent:
                sent.append(True)
                return oauth_payload(args)
            return b"" if args.auth == "xoauth2" else b"\x01"

        return m.authenticate(args.auth.upper(), respond)
    if args.auth == "login":
        return m.login(args.user, args.password)
    ir = base64.b64encode(("%s\0%s\0%s" % (args.authzid, args.user, args.password)).encode()).decode()
    if args.auth == "plain":
        return m.authenticate("PLAIN", lambda _challenge: base64.b64decode(ir))
    # plain-ir: SASL-IR (RFC 4959), initial response on the command line.
    typ, dat = m._simple_command("AUTHENTICATE", "PLAIN", ir)
    if typ != "OK":
        raise m.error(dat[-1])
    m.state = "AUTH"
    return typ, dat


def fetch_all(m, args):
    typ, dat = m.select("INBOX", readonly=True)
    if typ != "OK":
        raise m.error("SELECT failed: %r" % dat)
    count = int(dat[0])
    item = "(RFC822)" if args.fetch == "rfc822" else "(BODY.PEEK[])"
    messages = []
    for seq in range(1, count + 1):
        typ, data = m.fetch(str(seq), item)
        if typ != "OK":
            raise m.error("FETCH %d failed: %r" % (seq, data))
        body = next(part[1] for part in data if isinstance(part, tuple))
        messages.append({"seq": seq, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    return count, messages


def idle(m, args):
    typ, dat = m.select("INBOX")
    if typ != "OK":
        raise m.error("SELECT failed: %r" % dat)
    before = int(dat[0])
    tag = m._new_tag()
    m.send(tag + b" IDLE\r\n")
    first = m.readline()
    if not first.startswith(b"+"):
        raise m.error("IDLE refused: %r" % first)
    print("IDLING", flush=True)
    deadline = time.monotonic() + args.idle_timeout
    seen = []
    exists = None
    while exists is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise m.error("no EXISTS within %ss; saw %r" % (args.idle_timeout, seen))
        m.sock.settimeout(left)
        line = m.readline()
        if not line:
            raise m.error("connection closed during IDLE; saw %r" % seen)
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        seen.append(text)
        match = re.match(r"^\* (\d+) EXISTS$", text)
        if match and int(match.group(1)) > before:
            exists = int(match.group(1))
    m.sock.settimeout(args.timeout)
    m.send(b"DONE\r\n")
    while True:
        line = m.readline()
        if not line:
            raise m.error("connection closed after DONE")
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise m.error("IDLE ended badly: %r" % line)
            break
    return before, exists, seen


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", choices=["implicit", "starttls", "none"], default="implicit")
    p.add_argument("--cafile", help="CA certificate (PEM) to verify the server with")
    p.add_argument("--servername", help="TLS name to send and verify (default: --host)")
    p.add_argument("--user", required=True)
    p.add_argument("--password", default="")
    p.add_argument("--token", default="", help="OAuth bearer token for --auth xoauth2/oauthbearer")
    p.add_argument("--auth", choices=["login", "plain", "plain-ir", "xoauth2", "oauthbearer"],
                   default="login")
    p.add_argument("--mode", choices=["fetch", "login", "idle", "enable"], default="fetch")
    p.add_argument("--enable", default="UTF8=ACCEPT", help="capability for --mode enable")
    p.add_argument("--fetch", choices=["rfc822", "body-peek"], default="body-peek")
    p.add_argument("--authzid", default="", help="SASL PLAIN authorization identity")
    p.add_argument("--source", help="local address to connect from, e.g. 127.0.0.2")
    p.add_argument("--repeat", type=int, default=1,
                   help="log in this many times, one connection each, one after the other; "
                        "with --expect-fail every one must be refused (reports the refusals)")
    p.add_argument("--vary-password", action="store_true",
                   help="with --repeat: append the attempt number to the password (a guesser)")
    p.add_argument("--expect-fail", action="store_true", help="succeed only if login is refused")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout, seconds")
    p.add_argument("--idle-timeout", type=float, default=15.0, help="how long to wait for EXISTS")
    args = p.parse_args()
    if args.repeat > 1:
        return repeat(args)

    try:
        m = connect(args)
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        emit({"ok": False, "stage": "connect", "error": str(e)})
        return 2
    result = {"greeting": m.welcome.decode("utf-8", "replace"), "capabilities": list(m.capabilities)}
    try:
        typ, dat = login(m, args)
    except imaplib.IMAP4.error as e:
        text = str(e)
        if args.expect_fail:
            emit(dict(result, ok=False, stage="login", refused=True, error=text))
            return 0
        emit(dict(result, ok=False, stage="login", error=text))
        return 1
    except Exception as e:  # noqa: BLE001
        emit(dict(result, ok=False, stage="login", error="%s: %s" % (type(e).__name__, e)))
        return 2
    if args.expect_fail:
        emit(dict(result, ok=False, stage="login", refused=False, error="login unexpectedly succeeded"))
        return 1
    result["login"] = dat[-1].decode("utf-8", "replace") if dat and isinstance(dat[-1], bytes) else str(dat)
    try:
        if args.mode == "fetch":
            count, messages = fetch_all(m, args)
            result.update(count=count, messages=messages)
        elif args.mode == "idle":
            before, exists, seen = idle(m, args)
            result.update(before=before, exists=exists, untagged=seen)
        elif args.mode == "enable":
            typ, dat = m.enable(args.enable)
            result.update(enable=typ, enabled=[d.decode("utf-8", "replace") for d in dat if d])
        m.logout()
    except Exception as e:  # noqa: BLE001
        emit(dict(result, ok=False, stage=args.mode, error="%s: %s" % (type(e).__name__, e)))
        return 1
    emit(dict(result, ok=True))
    return 0


def repeat(args):
    """--repeat N: N logins in a row (a phone retrying a stale password, a guesser)."""
    refusals = []
    password = args.password
    for n in range(args.repeat):
        if args.vary_password:
            args.password = "%s%d" % (password, n)
        try:
            m = connect(args)
        except Exception as e:  # noqa: BLE001
            emit({"ok": False, "stage": "connect", "error": str(e), "refusals": refusals})
            return 2
        try:
            login(m, args)
        except imaplib.IMAP4.error as e:
            refusals.append(str(e))
            m.shutdown()
            continue
        m.logout()
        if args.expect_fail:
            emit({"ok": False, "error": "login unexpectedly succeeded", "refusals": refusals})
            return 1
    ok = len(refusals) == args.repeat if args.expect_fail else not refusals
    emit({"ok": ok, "refusals": refusals})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
