#!/usr/bin/env python3
"""POP3 test client for the mailgate suite (Python 3 stdlib only).

Logs in (USER/PASS, or AUTH PLAIN with or without an initial response, RFC 5034), runs
STAT, RETRs every message and reports size + sha256 of each (dot-stuffing removed, CRLF
line ends restored, so the digest is of the message as stored). Prints one JSON object as
its last stdout line; exit 0 means the run did what was asked (including an expected
failure).

Examples:
  pop3_client.py --port 995 --tls implicit --cafile ca.pem --user alice@example.com --password s
  pop3_client.py --port 110 --tls stls --cafile ca.pem --auth plain --user u --password bad --expect-fail
"""

import argparse
import base64
import hashlib
import json
import poplib
import ssl
import sys


def emit(obj):
    print(json.dumps(obj), flush=True)


def make_ctx(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    return ctx


class Client(poplib.POP3):
    """poplib.POP3 with implicit TLS or STLS under an explicit SNI/verification name."""

    def __init__(self, host, port, tls, ctx, server_name, timeout):
        self._tls_mode = tls
        self._ctx = ctx
        self._server_name = server_name
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        sock = super()._create_socket(timeout)
        if self._tls_mode == "implicit":
            sock = self._ctx.wrap_socket(sock, server_hostname=self._server_name)
        return sock

    def stls_named(self):
        # As poplib.stls, but verifying --servername rather than --host.
        resp = self._shortcmd("STLS")
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self._server_name)
        self.file = self.sock.makefile("rb")
        self._tls_established = True
        return resp


def oauth_payload(args):
    # XOAUTH2 and OAUTHBEARER (RFC 7628 section 3.1) initial responses.
    if args.auth == "xoauth2":
        raw = "user=%s\x01auth=Bearer %s\x01\x01" % (args.user, args.token)
    else:
        raw = "n,a=%s,\x01host=%s\x01port=%d\x01auth=Bearer %s\x01\x01" % (
            args.user, args.host, args.port, args.token)
    return base64.b64encode(raw.encode()).decode()


def login(p, args):
    if args.auth in ("xoauth2", "oauthbearer"):
        # RFC 5034 initial response. On failure the server sends "+ <error JSON>"; answer it
        # (empty for XOAUTH2, ^A for OAUTHBEARER) and read the final -ERR.
        p._putcmd("AUTH %s %s" % (args.auth.upper(), oauth_payload(args)))
        line, _ = p._getline()
        if line.startswith(b"+OK"):
            return line
        if line.startswith(b"+"):
            p._putcmd("" if args.auth == "xoauth2" else "AQ==")
            line, _ = p._getline()
        raise poplib.error_proto(line)
    if args.auth == "user":
        p.user(args.user)
        return p.pass_(args.password)
    ir = base64.b64encode(("\0%s\0%s" % (args.user, args.password)).encode()).decode()
    if args.auth == "plain-ir":
        return p._shortcmd("AUTH PLAIN " + ir)
    # AUTH PLAIN, then the response to the empty "+ " challenge.
    p._putcmd("AUTH PLAIN")
    line, _ = p._getline()
    if not line.startswith(b"+"):
        raise poplib.error_proto(line)
    return p._shortcmd(ir)


def retr_all(p):
    count, size = p.stat()
    messages = []
    for n in range(1, count + 1):
        _resp, lines, _octets = p.retr(n)
        body = b"".join(line + b"\r\n" for line in lines)
        messages.append({"seq": n, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    return count, size, messages


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls", choices=["implicit", "stls", "none"], default="implicit")
    ap.add_argument("--cafile")
    ap.add_argument("--servername", help="TLS name to send and verify (default: --host)")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", default="")
    ap.add_argument("--token", default="", help="OAuth bearer token for --auth xoauth2/oauthbearer")
    ap.add_argument("--auth", choices=["user", "plain", "plain-ir", "xoauth2", "oauthbearer"],
                    default="user")
    ap.add_argument("--mode", choices=["retr", "login"], default="retr")
    ap.add_argument("--expect-fail", action="store_true", help="succeed only if login is refused")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    try:
        ctx = make_ctx(args.cafile) if args.tls != "none" else None
        p = Client(args.host, args.port, args.tls, ctx, args.servername or args.host, args.timeout)
        if args.tls == "stls":
            p.stls_named()
    except Exception as e:  # noqa: BLE001 - report every failure as JSON
        emit({"ok": False, "stage": "connect", "error": "%s: %s" % (type(e).__name__, e)})
        return 2
    result = {"greeting": p.getwelcome().decode("utf-8", "replace")}
    try:
        resp = login(p, args)
    except poplib.error_proto as e:
        text = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
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
    result["login"] = resp.decode("utf-8", "replace")
    try:
        if args.mode == "retr":
            count, size, messages = retr_all(p)
            result.update(count=count, size=size, messages=messages)
        p.quit()
    except Exception as e:  # noqa: BLE001
        emit(dict(result, ok=False, stage=args.mode, error="%s: %s" % (type(e).__name__, e)))
        return 1
    emit(dict(result, ok=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
