#!/bin/sh
# Regenerates mailgate's TEST PKI in this directory. Test only: the private keys are committed
# and therefore public. Never use these anywhere but tests and local development.
#
#   ca.pem / ca.key                 "mailgate test CA", self-signed, may sign server certs only
#   localhost.pem / localhost.key   leaf for DNS:localhost, IP:127.0.0.1, IP:::1 (serverAuth),
#                                   signed by the test CA
#
# Keys are ECDSA P-256 in PKCS#8 (rustls and Dovecot both read them). Validity is 20 years so
# the tests do not start failing on their own; rerun this script (and commit the result) to
# renew. Needs the openssl CLI (1.1.1 or 3.x).
set -eu

cd "$(dirname "$0")"
DAYS=7300

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" \
    -subj "/O=mailgate test/CN=mailgate test CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out ca.pem

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out localhost.key
openssl req -new -key localhost.key -subj "/O=mailgate test/CN=localhost" -out "$tmp/localhost.csr"
cat > "$tmp/leaf.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
openssl x509 -req -in "$tmp/localhost.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days "$DAYS" -extfile "$tmp/leaf.ext" -out localhost.pem

# Readable by the test Dovecot too; these keys are public anyway.
chmod 0644 ca.key localhost.key ca.pem localhost.pem

openssl verify -CAfile ca.pem localhost.pem
