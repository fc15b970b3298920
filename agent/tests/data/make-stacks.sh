#!/usr/bin/env bash
# Regenerates stacks.pcapng: TLS 1.3 client flights of other stacks than OpenSSL, on
# loopback, ports 19101-19107, each against `openssl s_server`:
#   19101 Java (JSSE) one-way            19102 Java mutual TLS
#   19103 Java asked, has no certificate 19104 NSS (tstclnt) mutual TLS
#   19105 NSS one-way                    19106 Python, post-handshake auth with a certificate
#   19107 Python, post-handshake auth offered, never asked
# Run as root from this directory: ./make-stacks.sh (needs openssl, dumpcap, java,
# javac, libnss3-tools, python3).
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=stacks CA" -out ca.pem
for n in server client; do
  openssl ecparam -name prime256v1 -genkey -noout -out $n.key
  openssl req -new -key $n.key -subj "/CN=$n.test" -out $n.csr
  echo "subjectAltName=DNS:$n.test,IP:127.0.0.1,URI:spiffe://cluster.local/ns/default/sa/$n" > $n.ext
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -extfile $n.ext -out $n.pem 2>/dev/null
done
openssl pkcs12 -export -in client.pem -inkey client.key -name client -passout pass:test -out client.p12
mkdir nssdb
certutil -N -d sql:nssdb --empty-password
pk12util -i client.p12 -d sql:nssdb -W test >/dev/null
certutil -A -d sql:nssdb -n ca -t CT,, -i ca.pem
javac -d . "$here/peers/JavaClient.java"
dumpcap -q -i lo -f "tcp portrange 19101-19107" -w "$work/cap.pcapng" >/dev/null 2>&1 &
sleep 1
srv() { sleep 30 | timeout 35 openssl s_server -quiet -www -tls1_3 -accept "$1" -cert server.pem -key server.key -CAfile ca.pem "${@:2}" >/dev/null 2>&1 & sleep 1.5; }
srv 19101;            timeout 30 java -cp . JavaClient 127.0.0.1 19101 || true
srv 19102 -Verify 1;  timeout 30 java -cp . JavaClient 127.0.0.1 19102 client.p12 || true
srv 19103 -verify 1;  timeout 30 java -cp . JavaClient 127.0.0.1 19103 || true
srv 19104 -Verify 1;  printf 'GET / HTTP/1.0\r\n\r\n' | timeout 4 tstclnt -h 127.0.0.1 -p 19104 -d sql:nssdb -n client -V tls1.3:tls1.3 -o >/dev/null 2>&1 || true
srv 19105;            printf 'GET / HTTP/1.0\r\n\r\n' | timeout 4 tstclnt -h 127.0.0.1 -p 19105 -d sql:nssdb -V tls1.3:tls1.3 -o >/dev/null 2>&1 || true
python3 "$here/peers/pha.py" server 19106 server.pem server.key ca.pem & sleep 2.5
timeout 5 python3 "$here/peers/pha.py" client 19106 ca.pem client.pem client.key || true
sleep 1
srv 19107;            timeout 5 python3 "$here/peers/pha.py" client 19107 ca.pem || true
sleep 2
kill -INT %1 2>/dev/null || true
sleep 1
cp "$work/cap.pcapng" "$here/stacks.pcapng"
