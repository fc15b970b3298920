#!/usr/bin/env bash
# Regenerates handshakes.pcapng: real handshakes on loopback, ports 19001-19009.
# Run as root from this directory: ./make-captures.sh  (needs openssl, curl, dumpcap)
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=capture CA" -out ca.pem
for n in server client; do
  openssl ecparam -name prime256v1 -genkey -noout -out $n.key
  openssl req -new -key $n.key -subj "/CN=$n.test" -out $n.csr
  echo "subjectAltName=DNS:$n.test,IP:127.0.0.1,URI:spiffe://cluster.local/ns/default/sa/$n" > $n.ext
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -extfile $n.ext -out $n.pem 2>/dev/null
done
dumpcap -q -i lo -f "tcp portrange 19001-19009" -w "$work/cap.pcapng" >/dev/null 2>&1 &
sleep 1
srv() { sleep 2 | timeout 3 openssl s_server -quiet -www -accept "$1" -cert server.pem -key server.key -CAfile ca.pem "${@:2}" >/dev/null 2>&1 & sleep 0.3; }
get() { curl -sS --max-time 3 --cacert ca.pem -o /dev/null "$@" || true; }
srv 19001 -tls1_3 -Verify 1 -ciphersuites TLS_AES_128_GCM_SHA256; get --cert client.pem --key client.key https://127.0.0.1:19001/
srv 19002 -tls1_3;                                                   get https://127.0.0.1:19002/
srv 19003 -tls1_3 -verify 1;                                         get https://127.0.0.1:19003/
srv 19004 -tls1_2 -Verify 1;                                         get --tls-max 1.2 --cert client.pem --key client.key https://127.0.0.1:19004/
srv 19005 -tls1_2 -verify 1;                                         get --tls-max 1.2 https://127.0.0.1:19005/
srv 19006 -tls1_3 -Verify 1 -groups P-384;                           get --curves X25519:P-384 --cert client.pem --key client.key https://127.0.0.1:19006/
srv 19007 -tls1_3 -Verify 1;                                         get https://127.0.0.1:19007/
python3 -m http.server --bind 127.0.0.1 19008 >/dev/null 2>&1 & sleep 0.5; get http://127.0.0.1:19008/
srv 19009 -Verify 1;                                                 get http://127.0.0.1:19009/
sleep 2.5
kill -INT %dumpcap 2>/dev/null || pkill -INT -f "dumpcap -q -i lo -f tcp portrange 19001-19009" || true
sleep 1
cp "$work/cap.pcapng" "$OLDPWD/handshakes.pcapng"
