#!/usr/bin/env bash
# A self-signed CA, a coordinator certificate signed by it, and a random bearer token, for a
# test deployment (production: use your own CA). Writes into OUT_DIR (default deploy/secrets,
# which git ignores):
#   ca.crt                    the CA clients trust (--tls-ca)
#   ca.key                    the CA's key (keep it off the machines; it signs nothing else here)
#   coordinator.crt / .key    the coordinator's certificate and key (--tls-cert / --tls-key)
#   token                     the clients' shared bearer token (--token-file), mode 0600
# The certificate names localhost, 127.0.0.1 (health probes inside the container), the
# Compose service `coordinator` and the Kubernetes Service `fedseed-coordinator` (with its
# namespace-qualified forms); pass more host names or IP addresses as extra arguments:
#   deploy/make-certs.sh deploy/secrets coordinator.example.org 10.0.0.5
# An existing OUT_DIR is never overwritten (remove it to start over).
set -euo pipefail

out="${1:-$(dirname "$0")/secrets}"
shift || true
days="${FEDSEED_CERT_DAYS:-365}"

if [[ -e "$out/ca.crt" || -e "$out/token" ]]; then
  echo "error: $out already holds certificates or a token; remove it to make new ones" >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "error: openssl is not installed" >&2; exit 2; }
mkdir -p "$out"
umask 077

names="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:coordinator,DNS:fedseed-coordinator"
names+=",DNS:fedseed-coordinator.default,DNS:fedseed-coordinator.default.svc"
names+=",DNS:fedseed-coordinator.default.svc.cluster.local"
ip_re='^[0-9.]+$|:'
for extra in "$@"; do
  if [[ "$extra" =~ $ip_re ]]; then names+=",IP:$extra"; else names+=",DNS:$extra"; fi
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
  -subj "/CN=fedseed test CA" -keyout "$out/ca.key" -out "$out/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
  -subj "/CN=fedseed coordinator" -keyout "$out/coordinator.key" -out "$out/coordinator.csr" \
  2>/dev/null
openssl x509 -req -in "$out/coordinator.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -sha256 -days "$days" -out "$out/coordinator.crt" \
  -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$names") \
  2>/dev/null
rm -f "$out/coordinator.csr" "$out/ca.srl"
openssl rand -hex 32 > "$out/token"
chmod 0644 "$out/ca.crt" "$out/coordinator.crt"  # keys and the token stay owner-only (umask)
echo "wrote $out: ca.crt ca.key coordinator.crt coordinator.key token (names: $names)"
# The images run as uid 10001 and Compose bind-mounts secrets with the host's owner and modes:
# the key and the token must belong to that uid for the containers to read them.
uid="${FEDSEED_SECRETS_UID:-10001}"
if [[ "$(id -u)" == 0 ]]; then
  chown "$uid:$uid" "$out/coordinator.key" "$out/token"
  echo "coordinator.key and token now belong to uid $uid (the containers' user)"
else
  echo "for Compose: sudo chown $uid:$uid $out/coordinator.key $out/token (the containers' user)"
fi
