#!/usr/bin/env bash
# `make compose-smoke`: start the compose deployment for real on this Docker host, run one round of a
# tiny experiment over mutual TLS, check the committed version, and tear everything down.
#
#   docker/smoke.sh            (from anywhere; needs a running Docker engine, root for debootstrap)
#
# 1. images  a Debian bookworm base made with debootstrap + `docker import` (built only when
#            missing, no registry needed), then the coordinator and a CPU worker from the real
#            Dockerfiles (BASE_IMAGE, TORCH_* build args) and PostgreSQL from Debian's package
#            (docker/smoke/Dockerfile.postgres). Docker's layer cache makes later runs quick.
# 2. files   certificates from the real `fedtune certs init` (run in the coordinator image), a tiny
#            BERT + tokenizer and tiny JSONL data per site (docker/smoke/make_fixture.py, run in the
#            worker image), a .env with fresh secrets, and the compose file derived from
#            docker/docker-compose.yml (docker/smoke/compose_smoke.py: CPU workers, local images).
# 3. up      postgres -> migrate -> coordinator (healthy) -> worker-site-a, worker-site-b.
# 4. round   submit docker/smoke/experiment.yaml, wait until its round is committed, check that
#            `fedtune admin models list` shows the version and that the export loads with peft.
# 5. down    containers, network and volumes (also on failure or Ctrl-C), and the work folder.
#
# Settings (environment):
#   SMOKE_TIMEOUT=900          seconds for steps 2-4 (the run itself, images already built)
#   SMOKE_BUILD_TIMEOUT=3600   seconds for step 1 (the first build installs torch, transformers ...)
#   SMOKE_ROUND_TIMEOUT=600    seconds to wait for the round to commit (within SMOKE_TIMEOUT)
#   SMOKE_DEBIAN_MIRROR        mirror for debootstrap (default: this host's apt mirror, else deb.debian.org)
#   SMOKE_CA_BUNDLE            CA bundle whose extra certificates (a TLS proxy's) the base image trusts
#                              too (default /etc/ssl/certs/ca-certificates.crt; pip uses it: PIP_CERT)
#   SMOKE_TORCH_WHEEL          path of torch-2.13.0+cpu-cp311-*.whl (default: found in docker/wheels/,
#                              pip's find-links, or downloaded from the PyPI CPU index by pip)
#   SMOKE_KEEP=1               leave the deployment running for a look (tear down by hand: see README)
#   SMOKE_REBUILD_BASE=1       rebuild the debootstrapped base image
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-900}
SMOKE_BUILD_TIMEOUT=${SMOKE_BUILD_TIMEOUT:-3600}
SMOKE_ROUND_TIMEOUT=${SMOKE_ROUND_TIMEOUT:-600}
PYTHON=${PYTHON:-python3}
SMOKE_CA_BUNDLE=${SMOKE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
TAG=smoke
BASE_IMAGE=fedtune-smoke-base:bookworm
POSTGRES_IMAGE=fedtune-smoke-postgres:$TAG
COORDINATOR_IMAGE=fedtune-coordinator:$TAG
WORKER_IMAGE=fedtune-worker:$TAG
TORCH_VERSION=2.13.0
PROJECT=fedtune-smoke-$$
FEDTUNE_UID=10001
export DOCKER_BUILDKIT=0   # the classic builder: no frontend image to pull, BASE_IMAGE args in FROM

START=$SECONDS
WORK=""
COMPOSE=()
FAILED=1

say() { printf '[smoke %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }

deadline=0
set_deadline() { deadline=$((SECONDS + $1)); }
remaining() {
    local left=$((deadline - SECONDS))
    ((left > 0)) || die "out of time (SMOKE_TIMEOUT / SMOKE_BUILD_TIMEOUT)"
    echo "$left"
}
# Every command that could hang runs under the time left.
bounded() {
    local left
    left=$(remaining) || exit 1
    timeout --kill-after=10 "$left" "$@"
}

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#COMPOSE[@]})); then
        if ((FAILED)); then
            say "logs of the failed run (last 60 lines per service):"
            timeout 60 "${COMPOSE[@]}" logs --no-color --tail 60 || true
        fi
        if [[ ${SMOKE_KEEP:-0} == 1 ]]; then
            say "SMOKE_KEEP=1: left running; tear down with: ${COMPOSE[*]} down -v --remove-orphans"
        else
            say "tearing down (containers, network, volumes)"
            timeout 180 "${COMPOSE[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 \
                || say "WARNING: 'docker-compose down' failed; remove project $PROJECT by hand"
        fi
    fi
    if [[ -n $WORK && ${SMOKE_KEEP:-0} != 1 ]]; then
        rm -rf "$WORK"
    fi
    if ((FAILED)); then
        say "compose smoke test FAILED after $((SECONDS - START)) s"
        exit $((rc ? rc : 1))
    fi
    say "compose smoke test passed in $((SECONDS - START)) s"
}
trap teardown EXIT
trap 'die "interrupted"' INT TERM

# ---- 0. tools --------------------------------------------------------------------------------
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd; see docker/README.md)"
if docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE_CMD=(docker-compose)
else
    die "neither 'docker compose' (v2 plugin) nor 'docker-compose' is installed"
fi
"$PYTHON" -c "import yaml" 2>/dev/null || die "$PYTHON has no PyYAML (set PYTHON=... or install python3-yaml)"
say "engine $(docker version --format '{{.Server.Version}}'), $("${COMPOSE_CMD[@]}" version --short 2>/dev/null || echo compose), storage driver $(docker info --format '{{.Driver}}')"

# ---- 1. images -------------------------------------------------------------------------------
set_deadline "$SMOKE_BUILD_TIMEOUT"

debian_mirror() {
    if [[ -n ${SMOKE_DEBIAN_MIRROR:-} ]]; then echo "$SMOKE_DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(grep -rhoE '^(URIs: |deb )https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | head -1 | sed -E 's/^(URIs: |deb )//; s/ *$//') || true
    echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ${SMOKE_REBUILD_BASE:-0} == 1 ]] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || die "$BASE_IMAGE is missing and debootstrap is not installed (apt-get install debootstrap)"
    ((EUID == 0)) || die "$BASE_IMAGE is missing: debootstrap needs root"
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /tmp/fedtune-smoke-rootfs.XXXXXX)
    say "base image: debootstrap bookworm from $mirror (python3, venv, ca-certificates) ..."
    bounded debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; rm -rf "$rootfs"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    chmod 0755 "$rootfs"   # mktemp made it 0700: it becomes the image's /, which everyone must enter
    # CA certificates this host trusts beyond Debian's (e.g. a TLS-intercepting proxy in front of
    # PyPI): the image builds must trust them too, or pip cannot install anything.
    extra=$("$PYTHON" - "$SMOKE_CA_BUNDLE" "$rootfs" <<'PY'
import re, sys
from pathlib import Path
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
bundle, root = Path(sys.argv[1]), Path(sys.argv[2])
known = set(pem.findall((root / "etc/ssl/certs/ca-certificates.crt").read_text()))
extra = [c for c in pem.findall(bundle.read_text()) if c not in known] if bundle.is_file() else []
folder = root / "usr/local/share/ca-certificates"
folder.mkdir(parents=True, exist_ok=True)
for i, cert in enumerate(extra):
    (folder / f"smoke-host-{i}.crt").write_text(cert + "\n")
print(len(extra))
PY
)
    if ((extra > 0)); then
        say "base image: + $extra CA certificate(s) of this host's $SMOKE_CA_BUNDLE"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    say "base image: docker import -> $BASE_IMAGE"
    tar -C "$rootfs" -c . | bounded docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
else
    say "base image: $BASE_IMAGE is there (SMOKE_REBUILD_BASE=1 rebuilds it)"
fi

# The CPU torch wheel for the worker image, put into docker/wheels/ (git-ignored, in the build context).
wheel_glob="torch-${TORCH_VERSION}+cpu-cp311-cp311-*.whl"
wheel=""
if [[ -n ${SMOKE_TORCH_WHEEL:-} ]]; then
    wheel=$SMOKE_TORCH_WHEEL
else
    for dir in "$HERE/wheels" $(pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
        found=$(compgen -G "$dir/$wheel_glob" | head -1 || true)
        if [[ -n $found ]]; then wheel=$found; break; fi
    done
fi
if [[ -z $wheel ]]; then
    say "torch: pip download torch==${TORCH_VERSION}+cpu (cp311) from the PyTorch CPU index ..."
    bounded "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --index-url https://download.pytorch.org/whl/cpu \
        -d "$HERE/wheels" "torch==${TORCH_VERSION}+cpu" || die "cannot get the CPU torch wheel (set SMOKE_TORCH_WHEEL)"
    wheel=$(compgen -G "$HERE/wheels/$wheel_glob" | head -1)
fi
[[ -f $wheel ]] || die "no torch wheel at $wheel"
if [[ $(dirname "$(realpath "$wheel")") != "$(realpath "$HERE/wheels")" ]]; then
    rm -f "$HERE"/wheels/torch-*.whl
    ln -f "$wheel" "$HERE/wheels/" 2>/dev/null || cp "$wheel" "$HERE/wheels/"
fi
say "torch: $(basename "$wheel") in docker/wheels/"

build() {  # build NAME IMAGE ARGS...
    local name=$1 image=$2 t0=$SECONDS log
    shift 2
    log=$(mktemp /tmp/fedtune-smoke-build.XXXXXX)
    say "build $name -> $image ..."
    if ! bounded docker build -q --force-rm -t "$image" "$@" >"$log" 2>&1; then
        tail -40 "$log"
        rm -f "$log"
        die "building $image failed"
    fi
    rm -f "$log"
    say "build $name: done in $((SECONDS - t0)) s"
}
build postgres "$POSTGRES_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -f "$HERE/smoke/Dockerfile.postgres" "$HERE/smoke"
build coordinator "$COORDINATOR_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -f "$HERE/Dockerfile.coordinator" "$REPO"
build worker "$WORKER_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg TORCH_CUDA=cpu --build-arg TORCH_VERSION="${TORCH_VERSION}+cpu" \
    --build-arg TORCH_PIP_ARGS="--find-links /tmp/wheels" \
    -f "$HERE/Dockerfile.worker" "$REPO"
say "images ready after $((SECONDS - START)) s"

# ---- 2. files --------------------------------------------------------------------------------
set_deadline "$SMOKE_TIMEOUT"
RUN_START=$SECONDS
WORK=$(mktemp -d /tmp/fedtune-smoke.XXXXXX)
chmod 0755 "$WORK"
mkdir -p "$WORK/certs" "$WORK/sites"
# The containers run as uid 10001; the files they write here must be theirs (keys are 0600).
chown "$FEDTUNE_UID:$FEDTUNE_UID" "$WORK/certs" "$WORK/sites" 2>/dev/null \
    || chmod 0777 "$WORK/certs" "$WORK/sites"
say "work folder $WORK"

say "certs: fedtune certs init (CA, coordinator, site-a, site-b, admin) ..."
bounded docker run --rm --network none -v "$WORK/certs:/out" "$COORDINATOR_IMAGE" \
    certs init --out /out --coordinator-host coordinator --site site-a --site site-b

say "fixture: tiny BERT + tokenizer and tiny JSONL data for site-a and site-b ..."
bounded docker run --rm --network none -v "$WORK/sites:/out" -v "$HERE/smoke:/smoke:ro" \
    --entrypoint python "$WORKER_IMAGE" /smoke/make_fixture.py /out site-a site-b

secret() { "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
ADMIN_TOKEN=$(secret)
cat >"$WORK/.env" <<EOF
POSTGRES_PASSWORD=$(secret)
FEDTUNE_ADMIN_TOKEN=$ADMIN_TOKEN
SITE_A_TOKEN=$(secret)
SITE_B_TOKEN=$(secret)
SITE_A_DATA_DIR=$WORK/sites/site-a/data
SITE_A_MODELS_DIR=$WORK/sites/site-a/models
SITE_B_DATA_DIR=$WORK/sites/site-b/data
SITE_B_MODELS_DIR=$WORK/sites/site-b/models
COORDINATOR_BIND=127.0.0.1
FEDTUNE_IMAGE_TAG=$TAG
FEDTUNE_LOG_LEVEL=INFO
EOF
chmod 0600 "$WORK/.env"
"$PYTHON" "$HERE/smoke/compose_smoke.py" "$HERE/docker-compose.yml" "$WORK/docker-compose.yml" \
    --postgres-image "$POSTGRES_IMAGE"
COMPOSE=("${COMPOSE_CMD[@]}" -p "$PROJECT" -f "$WORK/docker-compose.yml" --env-file "$WORK/.env" \
    --project-directory "$WORK")
bounded "${COMPOSE[@]}" config -q || die "the derived compose file does not validate"

# ---- 3. up -----------------------------------------------------------------------------------
say "up: postgres -> migrate -> coordinator (healthy) -> worker-site-a, worker-site-b ..."
bounded "${COMPOSE[@]}" up -d --no-build 2>&1 | sed 's/^/    /'

admin() {  # fedtune admin in the coordinator container: its cert (client auth), the CA, the admin token
    bounded "${COMPOSE[@]}" exec -T coordinator fedtune admin --tls-ca /certs/ca.pem --json "$@"
}
json() { "$PYTHON" -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

say "waiting for both workers to show up (mutual TLS, site certs) ..."
while :; do
    online=$(admin workers 2>/dev/null \
        | json "' '.join(sorted(w['site'] for w in d.get('workers', []) if w.get('state', '').lower() in ('online', 'idle', 'busy')))" \
        2>/dev/null || true)
    [[ $online == "site-a site-b" ]] && break
    remaining >/dev/null
    sleep 3
done
admin workers | json "'\n'.join('    %s %s %s' % (w['site'], w.get('worker_id', ''), w.get('state', '')) for w in d['workers'])"

# ---- 4. one round ----------------------------------------------------------------------------
say "submit docker/smoke/experiment.yaml and start it ..."
EXP=$(admin experiment submit - --start <"$HERE/smoke/experiment.yaml" | json "d['experiment_id']")
say "experiment $EXP: waiting for its round to commit (at most ${SMOKE_ROUND_TIMEOUT} s) ..."
round_deadline=$((SECONDS + SMOKE_ROUND_TIMEOUT))
last=""
while :; do
    states=$(admin rounds "$EXP" | json "' '.join(r['state'].lower() for r in d.get('rounds', []))" 2>/dev/null || true)
    if [[ $states != "$last" ]]; then say "    rounds: ${states:-none yet}"; last=$states; fi
    [[ " $states " == *" committed "* ]] && break
    [[ " $states " == *" failed "* || " $states " == *" aborted "* ]] && die "the round did not commit: $states"
    ((SECONDS < round_deadline)) || die "no committed round after ${SMOKE_ROUND_TIMEOUT} s"
    remaining >/dev/null
    sleep 3
done
admin experiment show "$EXP" | json "'    experiment %s: %s' % (d.get('experiment_id'), d.get('state'))"

VERSION=$(admin rounds "$EXP" | json "next(r['model_version_id'] for r in d['rounds'] if r['state'].lower() == 'committed')")
say "check: fedtune admin models list --experiment $EXP shows $VERSION as version 1 ..."
bounded "${COMPOSE[@]}" exec -T coordinator fedtune admin --tls-ca /certs/ca.pem models list --experiment "$EXP" \
    | sed 's/^/    /'
listed=$(admin models list --experiment "$EXP" \
    | json "[m['version'] for m in d['models'] if m['version_id'] == '$VERSION']")
[[ $listed == "[1]" ]] || die "models list: $VERSION has version $listed, not [1]"
say "check: export $VERSION and load it with peft on the tiny BERT (worker image) ..."
bounded "${COMPOSE[@]}" exec -T coordinator sh -c "rm -rf /tmp/export && fedtune admin --tls-ca /certs/ca.pem models export $VERSION --out /tmp/export" | sed 's/^/    /'
mkdir -p "$WORK/export"
bounded docker cp "$("${COMPOSE[@]}" ps -q coordinator):/tmp/export/." "$WORK/export/"
chmod -R a+rX "$WORK/export"
bounded docker run --rm --network none -v "$WORK/export:/export:ro" \
    -v "$WORK/sites/site-a/models:/models:ro" --entrypoint python "$WORKER_IMAGE" -c '
import peft, torch
from transformers import AutoModelForSequenceClassification
base = AutoModelForSequenceClassification.from_pretrained("/models/tiny-bert", num_labels=2)
model = peft.PeftModel.from_pretrained(base, "/export")
n = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
assert n > 0, "no LoRA parameters in the export"
print(f"    export loads: PeftModel with {n} LoRA parameters")
'

FAILED=0
say "round committed and checked in $((SECONDS - RUN_START)) s (images excluded)"
