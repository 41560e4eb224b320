#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/seeds/<target>/ (committed; rerun after editing).

Stream targets take `ctrl-len ctrl stream` (tests/fuzz/src/lib.rs): an empty ctrl gives the
defaults (TLS, default limits, whole stream in one chunk, logins refused).
"""
import base64
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def enum(index, count):
    """Bytes that make arbitrary's derive pick variant `index` of `count` (u32, LE)."""
    x = ((index << 32) + count - 1) // count
    return struct.pack("<I", min(x, 0xFFFFFFFF))


def seed(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def stream(ctrl, text):
    assert len(ctrl) < 256
    return bytes([len(ctrl)]) + ctrl + text


b64 = lambda b: base64.b64encode(b)
PLAIN = b64(b"\0alice@example.org\0s3cret-password")
XOAUTH2 = b64(b"user=alice@example.org\x01auth=Bearer ya29.a0AfH6SMBx\x01\x01")
OAUTHBEARER = b64(b"n,a=alice@example.org,\x01host=imap.example.org\x01port=993\x01"
                  b"auth=Bearer ya29.a0AfH6SMBx\x01\x01")

# Security: Tls 0, StartTlsOffered 1, Plaintext 2. Limits: Default 0, Smallest 1, Custom 2.
TLS = enum(0, 3) + enum(0, 3)
STARTTLS = enum(1, 3) + enum(0, 3)
SMALL = enum(0, 3) + enum(1, 3) + b"\x02"
# Then chunk and outcome choices: bytes that split into small chunks and accept a login.
CHOPPY = bytes(range(1, 64, 3))

imap_sessions = {
    "login": b"a1 CAPABILITY\r\na2 ID (\"name\" \"Thunderbird\" \"version\" \"115\")\r\n"
             b"a3 LOGIN alice@example.org \"s3cret pass\"\r\na4 SELECT INBOX\r\n",
    "login-literal": b"a1 LOGIN {17}\r\nalice@example.org {12+}\r\ns3cret\r\npass\r\n",
    "authenticate-plain-ir": b"A001 AUTHENTICATE PLAIN " + PLAIN + b"\r\nA002 NOOP\r\n",
    "authenticate-plain": b"A001 AUTHENTICATE PLAIN\r\n" + PLAIN + b"\r\n",
    "authenticate-login": b"A001 AUTHENTICATE LOGIN\r\n" + b64(b"alice") + b"\r\n"
                          + b64(b"s3cret") + b"\r\n",
    "xoauth2": b"1 AUTHENTICATE XOAUTH2 " + XOAUTH2 + b"\r\n\r\n2 LOGOUT\r\n",
    "oauthbearer": b"1 AUTHENTICATE OAUTHBEARER\r\n" + OAUTHBEARER + b"\r\nAQ==\r\n",
    "cancel-and-garbage": b"x AUTHENTICATE PLAIN\r\n*\r\n* BAD\r\n\r\nnotag\r\ny FETCH 1:* (FLAGS)\r\n"
                          b"z LOGIN {9999999999999999999999}\r\nw LOGOUT\r\n",
    "starttls": b"a STARTTLS\r\nb LOGIN injected pw\r\n",
}
for name, text in imap_sessions.items():
    seed("imap_frontend", name, stream(b"", text))
    seed("imap_parse", name, stream(enum(0, 3) + struct.pack("<HHH", 4096, 1024, 16384) + CHOPPY, text))
seed("imap_frontend", "login-choppy", stream(TLS + CHOPPY, imap_sessions["login"]))
seed("imap_frontend", "starttls-then-login",
     stream(STARTTLS, b"a1 CAPABILITY\r\na2 STARTTLS\r\n")
     )
seed("imap_frontend", "small-limits", stream(SMALL, b"a LOGIN {300}\r\nb NOOP\r\n" + b"x" * 600 + b"\r\n"))
seed("imap_parse", "server-literal",
     stream(enum(1, 3) + struct.pack("<HHH", 4096, 1024, 16384),
            b"* 1 FETCH (BODY[] {5}\r\nhello)\r\nmg1 OK done\r\n"))

pop3_sessions = {
    "user-pass": b"CAPA\r\nUSER alice@example.org\r\nPASS s3cret pass\r\nSTAT\r\n",
    "auth-plain-ir": b"AUTH PLAIN " + PLAIN + b"\r\nLIST\r\n",
    "auth-plain": b"AUTH\r\nAUTH PLAIN\r\n" + PLAIN + b"\r\n",
    "auth-login": b"AUTH LOGIN " + b64(b"alice") + b"\r\n" + b64(b"s3cret") + b"\r\n",
    "xoauth2": b"AUTH XOAUTH2 " + XOAUTH2 + b"\r\n\r\nQUIT\r\n",
    "oauthbearer": b"AUTH OAUTHBEARER\r\n" + OAUTHBEARER + b"\r\nAQ==\r\n",
    "garbage": b"NOOP\r\nRETR 1\r\nAUTH X Y Z\r\nAUTH PLAIN ***\r\n*\r\n\r\nPASS x\r\nQUIT\r\n",
    "stls": b"STLS\r\nUSER injected\r\n",
}
for name, text in pop3_sessions.items():
    seed("pop3_frontend", name, stream(b"", text))
    seed("pop3_parse", name, stream(struct.pack("<H", 512) + CHOPPY, text))
seed("pop3_frontend", "user-pass-choppy", stream(TLS + CHOPPY, pop3_sessions["user-pass"]))
seed("pop3_frontend", "stls-then-login", stream(STARTTLS, b"CAPA\r\nSTLS\r\n"))
seed("pop3_parse", "upstream", stream(struct.pack("<H", 512),
     b"+OK Dovecot ready.\r\n+ \r\n-ERR [AUTH] Authentication failed.\r\n+OK Logged in.\r\n"))

IMAP_GREETING = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
                 b"AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER] Dovecot ready.\r\n")
LOGGED_IN = b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
CHALLENGE = b64(b'{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}')
# Login choices: 0 LOGIN, 1 USER/PASS, 2 PLAIN, 3 SASL LOGIN, 4 XOAUTH2, 5 OAUTHBEARER.
for choice, name in enumerate(["login", "userpass", "plain", "sasl-login", "xoauth2", "oauthbearer"]):
    ok = stream(bytes([choice, 0]), IMAP_GREETING + b"+ OK\r\n+ \r\n+ UGFzc3dvcmQ6\r\nmg1 "
                + LOGGED_IN + b"* 1 EXISTS\r\n")
    seed("imap_replay", name + "-ok", ok)
    seed("imap_replay", name + "-no", stream(bytes([choice, 0]) + CHOPPY, IMAP_GREETING
         + b"+ " + CHALLENGE + b"\r\nmg1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"))
    seed("imap_replay", name + "-starttls", stream(bytes([choice, 1]), b"* OK Dovecot ready.\r\n"
         b"mg1 OK Begin TLS negotiation now.\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"
         b"mg2 OK Pre-login capabilities listed.\r\n+ \r\nmg3 " + LOGGED_IN))
    seed("pop3_replay", name + "-ok", stream(bytes([choice, 0]),
         b"+OK Dovecot ready.\r\n+OK\r\n+ \r\n+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n+OK Logged in.\r\n+OK 2 messages\r\n"))
    seed("pop3_replay", name + "-err", stream(bytes([choice, 0]) + CHOPPY,
         b"+OK Dovecot ready.\r\n+ " + CHALLENGE + b"\r\n-ERR [AUTH] Authentication failed.\r\n"))
    seed("pop3_replay", name + "-stls", stream(bytes([choice, 1]),
         b"+OK Dovecot ready.\r\n+OK Begin TLS negotiation now.\r\n+OK\r\n+OK Logged in.\r\n"))

# sasl: first byte picks PLAIN 0, XOAUTH2 1, OAUTHBEARER 2, LOGIN 3, ...
seed("sasl", "plain", b"\x00authz\0alice@example.org\0s3cret")
seed("sasl", "plain-b64", b"\x00" + PLAIN)
seed("sasl", "xoauth2", b"\x01user=alice@example.org\x01auth=Bearer ya29.a0AfH6SMBx\x01\x01")
seed("sasl", "oauthbearer", b"\x02n,a=al=2Cice=3D,\x01host=imap.example.org\x01port=993\x01"
     b"auth=Bearer ya29.a0AfH6SMBx\x01\x01")
seed("sasl", "oauthbearer-b64", b"\x02" + OAUTHBEARER)

V2_SIG = b"\r\n\r\n\0\r\nQUIT\n"
seed("proxy_header", "v1-tcp4", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\na1 NOOP\r\n")
seed("proxy_header", "v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 995\r\n")
seed("proxy_header", "v1-unknown", b"PROXY UNKNOWN\r\n")
seed("proxy_header", "v2-tcp4", V2_SIG + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 2])
     + struct.pack(">HH", 56324, 993) + b"+OK\r\n")
seed("proxy_header", "v2-tcp6-tlv", V2_SIG + b"\x21\x21\x00\x29" + bytes(range(32))
     + struct.pack(">HH", 56324, 993) + b"\x04\x00\x02ab" + b"\x20\x00\x00")
seed("proxy_header", "v2-local", V2_SIG + b"\x20\x00\x00\x00")

def jwt(header, claims):
    part = lambda s: base64.urlsafe_b64encode(s).rstrip(b"=")
    return part(header) + b"." + part(claims) + b".c2lnbmF0dXJl"

CLAIMS = (b'{"iss":"https://idp.example.org","aud":"imap","exp":1900000000,"nbf":1700000000,'
          b'"email":"alice@example.org","azp":"1234567890","act":{"sub":"svc"}}')
# ctrl: Settings (mode, audiences, algorithms, leeway, custom claim, delegation, now, alg, kid).
JWT_CTRL = bytes([3, 1]) + struct.pack("<HH", 0x1ff, 60) + b"\x00\x01" + struct.pack("<Q", 1800000000) + b"\x00\x00"
seed("jwt_claims", "entra", JWT_CTRL + b"\n" + jwt(b'{"alg":"RS256","kid":"k1","typ":"JWT"}', CLAIMS)
     + b"\n" + CLAIMS)
seed("jwt_claims", "introspection", bytes([1, 0]) + struct.pack("<HH", 1, 0) + b"\x00\x00"
     + struct.pack("<Q", 1800000000) + b"\x00\x00\n\n"
     + b'{"active":true,"sub":"alice","client_id":"thunderbird","exp":"1900000000","aud":["imap"]}')
seed("jwt_claims", "expired", JWT_CTRL + b"\n" + jwt(b'{"alg":"none"}', b'{"exp":1}') + b"\n"
     + b'{"iss":"https://idp.example.org","exp":1e300,"nbf":-5,"upn":"bob"}')
