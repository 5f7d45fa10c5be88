#!/usr/bin/env bash
# A private CA and certificates for Redis over TLS (rediss://), with OpenSSL 3:
#   deploy/tls-certs.sh OUT_DIR ADDRESS [ADDRESS...]
# writes OUT_DIR/ca.pem (copy it to every worker and notebook host), OUT_DIR/redis.pem + redis.key
# (the server's, valid for each ADDRESS: IPs or host names), and OUT_DIR/client.pem + client.key (for
# servers started with --tls-auth-clients yes). Keys are readable by their owner only.
# The tests make their throwaway CA with this script (tests/tlsredis.py).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 OUT_DIR ADDRESS [ADDRESS...]" >&2
  exit 2
fi
out=$1; shift
mkdir -p "$out"
umask 077
san=""
for a in "$@"; do
  if [[ $a =~ ^[0-9.]+$ || $a == *:* ]]; then san+="IP:$a,"; else san+="DNS:$a,"; fi
done
san=${san%,}
curve=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${curve[@]}" -days 825 -subj "/CN=mediaq Redis CA" \
  -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
openssl req "${curve[@]}" -subj "/CN=redis" -addext "subjectAltName=$san" \
  -keyout "$out/redis.key" -out "$out/redis.csr" 2>/dev/null
openssl x509 -req -in "$out/redis.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial -days 825 \
  -copy_extensions copy -out "$out/redis.pem" 2>/dev/null
openssl req "${curve[@]}" -subj "/CN=mediaq worker" -keyout "$out/client.key" -out "$out/client.csr" 2>/dev/null
openssl x509 -req -in "$out/client.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial -days 825 \
  -out "$out/client.pem" 2>/dev/null
rm -f "$out/redis.csr" "$out/client.csr" "$out/ca.srl"
chmod 644 "$out/ca.pem" "$out/redis.pem" "$out/client.pem"
echo "made $out/ca.pem, $out/redis.pem (for $*) and $out/client.pem"
