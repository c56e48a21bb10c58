#!/usr/bin/env bash
# Make a real Docker engine and an offline Python test image available for
# ccexec's integration tests (Debian bookworm, as root). Idempotent: each step
# runs only when needed, so a second run takes well under a second. The only
# network used is the Debian mirror apt already uses; there is no registry.
#
#   scripts/test-engine.sh [--podman]   # --podman: same image in podman too
#
# Env: CCEXEC_TEST_IMAGE (image name), CCEXEC_DEBIAN_MIRROR (else the one in
# /etc/apt), CCEXEC_DOCKERD_FLAGS (extra dockerd flags).
set -euo pipefail

IMAGE=${CCEXEC_TEST_IMAGE:-ccexec-test/python:3-slim}
CACHE=/var/cache/ccexec-rootfs      # the finished rootfs is reused across runs
ROOTFS=$CACHE/bookworm
DOCKERD_LOG=/tmp/ccexec-dockerd.log
WANT_PODMAN=0
case ${1:-} in --podman) WANT_PODMAN=1 ;; "") ;; *) echo "usage: $0 [--podman]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "test-engine: must run as root" >&2; exit 1; }
log() { echo "test-engine: $*"; }
die() { echo "test-engine: $*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
read -ra EXTRA_FLAGS <<<"${CCEXEC_DOCKERD_FLAGS:-}"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"   # serialise concurrent runs (CI and a developer...)
flock 9

apt_install() {  # 'apt-get update' at most once per run
  { [ -n "${APT_UPDATED:-}" ] || apt-get update -qq; apt-get install -y -qq "$@"; } \
    >/tmp/ccexec-apt.log 2>&1 || { tail -n 20 /tmp/ccexec-apt.log >&2; die "apt-get failed"; }
  APT_UPDATED=1
}

# --- 1. packages ------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io and debootstrap from Debian"
  apt_install docker.io debootstrap
fi
# We drive the daemon with Debian's own client, /usr/bin/docker, which always
# matches Debian's daemon. /usr/local/bin/docker (28.x) comes first in PATH;
# it negotiates the API down to the daemon's (1.41 for 20.10): checked below.
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(type -P docker) || die "no docker client"
PATH_DOCKER=$(type -P docker || true)
docker() { "$DOCKER" "$@"; }

# --- 2. daemon --------------------------------------------------------------
# -r RSDT: not zombies; a SIGKILLed dockerd stays a zombie here for ~1.5 s.
alive() { pgrep -x -r RSDT "$1" >/dev/null; }
up() { docker info >/dev/null 2>&1; }
start_dockerd() {  # $@: extra flags; fails if dockerd dies or is not up in 60 s
  log "starting dockerd${*:+ $*} (log: $DOCKERD_LOG)"
  # /run is on disk here, not tmpfs: a pid file from before a reboot survives
  # and its pid may now be another process, so dockerd would refuse to start.
  alive dockerd || rm -f /var/run/docker.pid
  alive containerd || rm -f /var/run/docker/containerd/containerd.pid
  # setsid: own session, so it outlives this script and CI's process group.
  # Every fd redirected or closed, so it holds neither the caller's pipes nor
  # our lock on fd 9 (else the next run would block on flock forever).
  setsid -f nohup dockerd "$@" >"$DOCKERD_LOG" 2>&1 </dev/null 9>&-
  for _ in $(seq 120); do
    up && return 0
    sleep 0.5
    alive dockerd || return 1
  done
  return 1
}
if ! up && alive dockerd; then
  log "dockerd is running but not answering yet; waiting"
  for _ in $(seq 60); do up || ! alive dockerd && break; sleep 1; done
fi
if up; then :
elif alive dockerd; then die "dockerd runs but does not answer; see $DOCKERD_LOG"
# Default flags work on this VM: overlay2, bridge network with iptables-nft
# NAT. dockerd itself falls back from overlay2 to vfs where overlay fails;
# what kills it in some sandboxes is iptables (no nat table), so retry
# without it: the default bridge still exists (host-only network) and
# '--network none' works.
elif ! start_dockerd "${EXTRA_FLAGS[@]}"; then
  tail -n 5 "$DOCKERD_LOG" >&2
  log "dockerd failed with default flags; retrying with --iptables=false"
  alive dockerd && { kill "$(cat /var/run/docker.pid)" || true; sleep 2; }  # hung
  start_dockerd "${EXTRA_FLAGS[@]}" --iptables=false --ip-masq=false ||
    { tail -n 40 "$DOCKERD_LOG" >&2; die "dockerd did not come up, see $DOCKERD_LOG"; }
fi

# --- 3. rootfs + image ------------------------------------------------------
debian_mirror() {  # first non-security Debian URI in apt's sources, any format
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^[[:space:]]*#' |
      grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ') || true
  echo "${CCEXEC_DEBIAN_MIRROR:-${m:-http://deb.debian.org/debian}}"
}
build_rootfs() {
  local d tmp mirror
  # A run killed mid-debootstrap leaves a build.* dir, maybe with proc still
  # mounted inside it: unmount before deleting.
  for d in "$CACHE"/build.*; do
    [ -e "$d" ] || continue
    findmnt -rno TARGET | grep "^$d/" | sort -r | xargs -r umount -l
    rm -rf --one-file-system "$d"
  done
  tmp=$(mktemp -d "$CACHE/build.XXXXXX")
  mirror=$(debian_mirror)
  log "debootstrap bookworm from $mirror (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-pip bookworm \
      "$tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  ln -sf python3 "$tmp/usr/bin/python"
  # Let tests 'pip install' into the system interpreter (PEP 668 marker).
  rm -f "$tmp"/usr/lib/python3*/EXTERNALLY-MANAGED
  # The downloaded .debs and apt lists are ~90 MB the image does not need.
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
  mv "$tmp" "$ROOTFS"   # atomic: $ROOTFS exists only once complete
}
import_rootfs() {  # $1: docker or podman
  [ -d "$ROOTFS" ] || build_rootfs
  log "importing $ROOTFS into $1 as $IMAGE"
  tar --numeric-owner -C "$ROOTFS" -c . |
    "$1" import --change 'CMD ["python3"]' \
      --change 'LABEL org.ccexec.test-image=1' - "$IMAGE" >/dev/null 2>"$CACHE/import.log" ||
    { cat "$CACHE/import.log" >&2; die "$1 import failed"; }
}
docker image inspect "$IMAGE" >/dev/null 2>&1 || import_rootfs docker

# --- 4. podman (optional) ---------------------------------------------------
if [ "$WANT_PODMAN" = 1 ]; then
  command -v podman >/dev/null || { log "installing podman"; apt_install podman; }
  # Root here lacks CAP_SYS_RESOURCE (hard nofile limit 20000), and podman's
  # default rlimits (nofile 1048576...) make every 'podman run' fail with
  # "error setting rlimit type 7: operation not permitted": lower the defaults.
  conf=/etc/containers/containers.conf
  ulimits='default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'
  if ! grep -qs '^[[:space:]]*default_ulimits' "$conf"; then
    mkdir -p /etc/containers
    if grep -qs '^\[containers\]' "$conf"; then
      sed -i "/^\[containers\]/a $ulimits" "$conf"
    else
      printf '[containers]\n%s\n' "$ulimits" >>"$conf"
    fi
  fi
  podman image exists "$IMAGE" || import_rootfs podman
  podman run --rm "$IMAGE" python3 -c 'print(1)' >/dev/null || die "podman run $IMAGE failed"
fi

# --- 5. summary -------------------------------------------------------------
vfmt='{{.Client.Version}} (API {{.Client.APIVersion}})'
log "server $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')," \
  "storage driver $(docker info --format '{{.Driver}}')"
log "client $DOCKER $(docker version --format "$vfmt")"
if [ -n "$PATH_DOCKER" ] && [ "$PATH_DOCKER" != "$DOCKER" ]; then
  if v=$("$PATH_DOCKER" version --format "$vfmt" 2>&1); then
    log "client $PATH_DOCKER (first in PATH) $v"
  else  # e.g. a client whose minimum API is above the daemon's
    log "WARNING: $PATH_DOCKER (first in PATH) cannot talk to the daemon: $v" >&2
    log "WARNING: use $DOCKER instead (or put /usr/bin first in PATH)" >&2
  fi
fi
log "image $IMAGE $(docker image inspect -f '{{.Id}} {{.Size}}' "$IMAGE" |
  awk '{printf "%s, %.0f MB", substr($1, 8, 12), $2 / 1e6}')"
if [ "$WANT_PODMAN" = 1 ]; then
  log "podman $(podman version --format '{{.Client.Version}}')," \
    "image $(podman image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-12)"
fi
log "ready in ${SECONDS}s"
