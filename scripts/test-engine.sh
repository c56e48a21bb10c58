#!/usr/bin/env bash
# Make a real Docker engine and an offline Python test image available for
# ccexec's integration tests (Debian bookworm, as root). Idempotent: each step
# runs only when needed, so a second run takes well under a second. The only
# network used is the Debian mirror apt already uses; there is no registry.
#
#   scripts/test-engine.sh [--podman] [--sshd]
#     --podman: the same image in podman too
#     --sshd:   an sshd on 127.0.0.1 (port 2222, or the next free one) with key
#               login for root, so that this engine is also reachable as a
#               remote one over SSH; the docker context ccexec-test-ssh names it
# Always: the unprivileged user ccexec-tester (tests run the local executor as it),
# and bubblewrap (the local executor's sandbox).
#
# Env: CCEXEC_TEST_IMAGE (image name), CCEXEC_DEBIAN_MIRROR (else the one in
# /etc/apt), CCEXEC_DOCKERD_FLAGS (extra dockerd flags), CCEXEC_TEST_SSH_PORT
# (the sshd's port, which must then be free).
set -euo pipefail

IMAGE=${CCEXEC_TEST_IMAGE:-ccexec-test/python:3-slim}
CACHE=/var/cache/ccexec-rootfs      # the finished rootfs is reused across runs
ROOTFS=$CACHE/bookworm
DOCKERD_LOG=/tmp/ccexec-dockerd.log
SSHD_DIR=/var/lib/ccexec-sshd       # the test sshd's keys, config, pid and log
SSH_CONTEXT=ccexec-test-ssh         # docker context: this engine over that sshd
WANT_PODMAN=0
WANT_SSHD=0
for arg in "$@"; do
  case $arg in
    --podman) WANT_PODMAN=1 ;;
    --sshd) WANT_SSHD=1 ;;
    *) echo "usage: $0 [--podman] [--sshd]" >&2; exit 2 ;;
  esac
done
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
if ! command -v bwrap >/dev/null; then  # LocalCommandLineCodeExecutor(sandbox=True)
  log "installing bubblewrap from Debian"
  apt_install bubblewrap
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

# --- 5. sshd: this engine as a remote one (optional) -------------------------
# The docker CLI reaches an ssh:// engine by running `ssh ... docker system
# dial-stdio` there. Our sshd listens on 127.0.0.1 only and lets in root with
# the key below only; the client side (that key, the host key, no prompts) is
# a drop-in in /etc/ssh/ssh_config.d that matches this host and port alone.
write_if_changed() {  # $1: file, stdin: content; succeeds when the file changed
  local new
  new=$(cat)
  [ -f "$1" ] && [ "$(cat "$1")" = "$new" ] && return 1
  printf '%s\n' "$new" >"$1.tmp" && mv "$1.tmp" "$1"
}
sshd_pid() {  # the pid of our sshd, when it runs
  local pid
  pid=$(cat "$SSHD_DIR/sshd.pid" 2>/dev/null) && [ -n "$pid" ] &&
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-f $SSHD_DIR/sshd_config" && echo "$pid"
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
stop_sshd() { kill "$1"; for _ in $(seq 20); do [ -e "/proc/$1" ] || break; sleep 0.1; done; }
if [ "$WANT_SSHD" = 1 ]; then
  if [ ! -x /usr/sbin/sshd ]; then
    log "installing openssh-server"
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep the package from starting an sshd on port 22
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_install openssh-server
  fi
  mkdir -p "$SSHD_DIR" /run/sshd   # /run/sshd: sshd's privilege separation dir
  chmod 700 "$SSHD_DIR"
  for key in host_ed25519 id_ed25519; do
    [ -s "$SSHD_DIR/$key.pub" ] ||
      { rm -f "$SSHD_DIR/$key"; ssh-keygen -q -t ed25519 -N '' -C "ccexec-test-$key" -f "$SSHD_DIR/$key"; }
  done
  running=$(sshd_pid || true)
  port=$(sed -n 's/^Port //p' "$SSHD_DIR/sshd_config" 2>/dev/null || true)
  if [ -z "$running" ] || [ "${CCEXEC_TEST_SSH_PORT:-$port}" != "$port" ]; then
    port=${CCEXEC_TEST_SSH_PORT:-${port:-2222}}
    if [ -n "$running" ]; then stop_sshd "$running"; running=; fi
    if port_busy "$port"; then
      [ -z "${CCEXEC_TEST_SSH_PORT:-}" ] || die "port $port (CCEXEC_TEST_SSH_PORT) is in use"
      for p in $(seq 2222 2299); do port_busy "$p" || { port=$p; break; }; done
      ! port_busy "$port" || die "no free port in 2222-2299 for the test sshd"
    fi
  fi
  changed=0
  write_if_changed "$SSHD_DIR/authorized_keys" <"$SSHD_DIR/id_ed25519.pub" || true
  write_if_changed "$SSHD_DIR/sshd_config" <<EOF && changed=1
# ccexec's test sshd (scripts/test-engine.sh --sshd): root by key, 127.0.0.1 only
Port $port
ListenAddress 127.0.0.1
HostKey $SSHD_DIR/host_ed25519
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
MaxStartups 100
MaxSessions 100
EOF
  write_if_changed "$SSHD_DIR/known_hosts" \
    <<<"[127.0.0.1]:$port $(cut -d' ' -f1,2 "$SSHD_DIR/host_ed25519.pub")" || true
  write_if_changed /etc/ssh/ssh_config.d/ccexec-test.conf <<EOF || true
# ccexec's test sshd (scripts/test-engine.sh --sshd): for 127.0.0.1:$port only.
Match host 127.0.0.1 exec "test %p = $port"
    IdentityFile $SSHD_DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $SSHD_DIR/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
EOF
  if [ -n "$running" ] && [ "$changed" = 1 ]; then stop_sshd "$running"; running=; fi
  if [ -z "$running" ]; then
    log "starting sshd on 127.0.0.1:$port (log: $SSHD_DIR/sshd.log)"
    /usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config" || die "bad sshd config $SSHD_DIR/sshd_config"
    # sshd daemonises itself (new session); it must not hold our lock on fd 9.
    /usr/sbin/sshd -f "$SSHD_DIR/sshd_config" -E "$SSHD_DIR/sshd.log" </dev/null >/dev/null 2>&1 9>&-
    for _ in $(seq 50); do port_busy "$port" && break; sleep 0.1; done
  fi
  endpoint="ssh://root@127.0.0.1:$port"
  if [ "$(docker context inspect -f '{{.Endpoints.docker.Host}}' "$SSH_CONTEXT" 2>/dev/null)" != "$endpoint" ]; then
    docker context rm -f "$SSH_CONTEXT" >/dev/null 2>&1 || true
    out=$(docker context create "$SSH_CONTEXT" --description "ccexec tests: this engine over SSH" \
      --docker "host=$endpoint" 2>&1) || die "docker context create failed: $out"
  fi
  # One round trip proves the key login, the host key and `docker system dial-stdio`.
  ssh_version=$(docker --context "$SSH_CONTEXT" version --format '{{.Server.Version}}' 2>&1) ||
    { tail -n 5 "$SSHD_DIR/sshd.log" >&2; die "the engine over $endpoint failed: $ssh_version"; }
fi

# --- 6. an unprivileged user --------------------------------------------------
# tests/test_attacks.py also runs the local executor as this user: attacks that
# root wins by privilege, or that root sees differently (a non-dumpable process's
# /proc entries), must be tried without it. No login shell; a home for HOME.
TESTER=ccexec-tester
if ! id -u "$TESTER" >/dev/null 2>&1; then
  log "creating user $TESTER"
  useradd --create-home --shell /usr/sbin/nologin --comment "ccexec tests, unprivileged" "$TESTER" ||
    die "useradd $TESTER failed"
fi
command -v setpriv >/dev/null || die "setpriv (util-linux) is missing"

# --- 7. summary -------------------------------------------------------------
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
if [ "$WANT_SSHD" = 1 ]; then
  log "engine over SSH: $endpoint (docker context $SSH_CONTEXT), server $ssh_version"
fi
log "unprivileged user $TESTER (uid $(id -u "$TESTER"))"
log "ready in ${SECONDS}s"
