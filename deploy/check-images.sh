#!/usr/bin/env bash
# Build both images from this repository and start them, without a Docker daemon or a registry:
#
#   1. a base image from Debian's packages (mmdebstrap | podman import), unless BASE_IMAGE names one;
#   2. `podman build --isolation chroot --format docker` (Docker format keeps HEALTHCHECK) of
#      deploy/docker/{coordinator,client}.Dockerfile on it
#      (RUN steps included: pip installs fedseed, the models are baked in);
#   3. a test CA, certificate and token (deploy/make-certs.sh);
#   4. the coordinator image's ENTRYPOINT + CMD, run as its USER inside its root filesystem
#      (`podman create` + `podman mount` + chroot: `podman run` needs cgroups this machine lacks),
#      with the config and the secrets placed where compose.yaml mounts them;
#   5. the image's HEALTHCHECK command (TLS gRPC health) until it answers SERVING;
#   6. one client from the client image's root filesystem, over TLS, until the run's one round
#      closes and the client prints its summary; then `fedseed status` on the database.
#
# Needs root, podman and mmdebstrap (Debian: apt-get install podman mmdebstrap). Takes about
# 15 minutes on 2 cores, mostly pip inside the builds; too long for CI, so it is run by hand
# and its result recorded (docs/deploy note in deploy/README.md). Exit 0: both images built, the
# coordinator served, a client finished a round against it.
#   deploy/check-images.sh            # work files under ${WORK:-/tmp/fedseed-images}
set -euo pipefail
cd "$(dirname "$0")/.."

work="${WORK:-/tmp/fedseed-images}"
port="${PORT:-50551}"
base="${BASE_IMAGE:-}"
mkdir -p "$work"
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

for tool in podman mmdebstrap openssl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 2; }
done
[[ "$(id -u)" == 0 ]] || { echo "error: run as root (chroot and bind mounts)" >&2; exit 2; }

if [[ -z "$base" ]]; then
  base=localhost/fedseed-base:bookworm
  if ! podman image exists "$base"; then
    step "base image from Debian's packages"
    # The base trusts this machine's CA bundle: its network may intercept TLS to the registries.
    mmdebstrap --variant=minbase \
      --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
      --customize-hook='upload /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt' \
      --customize-hook='echo "[global]\ncert = /etc/ssl/certs/ca-certificates.crt" > "$1/etc/pip.conf"' \
      bookworm "$work/base.tar" http://deb.debian.org/debian
    podman import "$work/base.tar" "$base"
  fi
fi

# torch's CPU wheel, when this machine has one for the base image's Python (the index's
# default build is the CUDA one, several GB).
for wheel in /opt/wheels/torch-2.13.0+cpu-*.whl; do
  [[ -e "$wheel" ]] && cp -n "$wheel" deploy/wheels/
done

for image in coordinator client; do
  step "podman build $image"
  podman build --isolation chroot --format docker --build-arg BASE_IMAGE="$base" \
    -f "deploy/docker/$image.Dockerfile" -t "localhost/fedseed-$image:check" .
done
podman images --filter reference='localhost/fedseed-*' --format '{{.Repository}}:{{.Tag}} {{.Size}}'

step "secrets"
rm -rf "$work/secrets"
deploy/make-certs.sh "$work/secrets" >/dev/null
# The check's run: the example config, shrunk to one round that one client can close.
sed -e 's/^rounds = .*/rounds = 1/' -e 's/^clients_per_round = .*/clients_per_round = 1/' \
  -e 's/^min_replies = .*/min_replies = 1/' deploy/configs/coordinator.toml > "$work/coordinator.toml"

mounted=()
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  podman rm -f fedseed-check-coordinator fedseed-check-client >/dev/null 2>&1 || true
}
trap cleanup EXIT

# rootfs IMAGE NAME: a writable root filesystem of IMAGE (a created, never started, container).
rootfs() {
  podman rm -f "$2" >/dev/null 2>&1 || true
  podman create --name "$2" "$1" >/dev/null
  local root
  root="$(podman mount "$2")"
  mkdir -p "$root/proc" "$root/dev" "$root/run/secrets" "$root/etc/fedseed" "$root/tmp"
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount --bind /dev "$root/dev" && mounted+=("$root/dev")
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  chmod 1777 "$root/tmp"
  echo "$root"
}

# inside ROOT IMAGE ARGS...: run ARGS in ROOT as the image's USER with the image's ENV.
inside() {
  local root="$1" image="$2"
  shift 2
  local user
  user="$(podman image inspect --format '{{.Config.User}}' "$image")"
  mapfile -t env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
  chroot --userspec="${user:-0:0}" "$root" /usr/bin/env -i "${env[@]}" HOME=/var/lib/fedseed \
    sh -c 'cd /var/lib/fedseed && exec "$@"' sh "$@"
}

# The image's command line, as `docker run IMAGE` would run it: ENTRYPOINT + CMD.
command_of() {
  podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' "$1" | sed '/^$/d'
}

step "coordinator: its image's ENTRYPOINT + CMD inside its root filesystem"
coordinator_image=localhost/fedseed-coordinator:check
croot="$(rootfs "$coordinator_image" fedseed-check-coordinator)"
install -m 0644 "$work/coordinator.toml" "$croot/etc/fedseed/coordinator.toml"
for pair in tls_cert:coordinator.crt tls_key:coordinator.key fedseed_token:token tls_ca:ca.crt; do
  install -m 0400 -o 10001 -g 10001 "$work/secrets/${pair#*:}" "$croot/run/secrets/${pair%%:*}"
done
mapfile -t ccmd < <(command_of "$coordinator_image")
ccmd=("${ccmd[@]/0.0.0.0:50051/0.0.0.0:$port}")  # the check's port, in case 50051 is taken here
printf 'command: %s\n' "${ccmd[*]}"
inside "$croot" "$coordinator_image" "${ccmd[@]}" > "$work/coordinator.log" 2>&1 &
pids+=($!)

step "health: the image's HEALTHCHECK command, over TLS"
mapfile -t health < <(podman image inspect --format '{{range .HealthCheck.Test}}{{println .}}{{end}}' "$coordinator_image" | sed '/^$/d')
health=("${health[@]:1}")  # drop "CMD"
health=("${health[@]/127.0.0.1:50051/127.0.0.1:$port}")
for _ in $(seq 120); do
  if inside "$croot" "$coordinator_image" "${health[@]}" 2>/dev/null | grep -qx SERVING; then
    echo "SERVING"
    break
  fi
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/coordinator.log"; echo "error: the coordinator exited" >&2; exit 1; }
  sleep 1
done
inside "$croot" "$coordinator_image" "${health[@]}" | grep -qx SERVING

step "client: the client image's ENTRYPOINT with compose.yaml's arguments"
client_image=localhost/fedseed-client:check
kroot="$(rootfs "$client_image" fedseed-check-client)"
for pair in fedseed_token:token tls_ca:ca.crt; do
  install -m 0400 -o 10001 -g 10001 "$work/secrets/${pair#*:}" "$kroot/run/secrets/${pair%%:*}"
done
mapfile -t entry < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$client_image" | sed '/^$/d')
# The client gives up by itself if the coordinator never answers (--connect-timeout, 30 s).
summary="$(inside "$kroot" "$client_image" "${entry[@]}" \
  --coordinator "localhost:$port" --name client-0 --shard 0 --num-shards 1 \
  --tls-ca /run/secrets/tls_ca --token-file /run/secrets/fedseed_token 2> "$work/client.log")"
echo "client summary: $summary"
grep -q '"rounds": 1' <<<"$summary"

step "status of the coordinator's database"
inside "$croot" "$coordinator_image" fedseed status /var/lib/fedseed/coordinator.db | tee "$work/status.txt"
grep -q "rounds closed: 1" "$work/status.txt"
echo
echo "OK: both images built; the coordinator served TLS health and closed a round with a client from the client image"
