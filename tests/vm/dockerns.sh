#!/usr/bin/env bash
# dockerns.sh - a private Docker engine inside a network namespace, for the Vagrant tests.
#
#   dockerns.sh up WORKDIR       netns + dockerd + the test node image; prints KEY=VALUE lines
#   dockerns.sh down WORKDIR     stop everything, remove netns, mounts, cgroups, WORKDIR (idempotent)
#   dockerns.sh deps             install vagrant, docker.io, debootstrap (never starting a host dockerd)
#   dockerns.sh build-image      only build/cache the node image (CI warms it once)
#
# Why a namespace: docker's default bridge is a private address range, and traffic to private ranges
# on this machine's own network is forbidden; inside a namespace with no uplink, containers reach only
# each other (bridge 198.18.0.0/24, the RFC 2544 benchmark range). Adapted from the verified recipe in
# the project's history (shared/recipes/vagrant); its pitfalls are noted where they bite:
#  - dockerd is started with `nsenter --net`, not `ip netns exec` (which remounts /sys and hides cgroups);
#  - the docker CLI that matches the daemon (/usr/bin/docker) goes first in PATH, DOCKER_BUILDKIT=0;
#  - a private --config-file keeps dockerd 20.10's key.json out of /etc/docker;
#  - the node image is built once with debootstrap from the apt mirror and cached by content tag.
# The image has sshd and a `vagrant` user with passwordless sudo and an empty ~/.ssh: cmflow puts its own
# per-cluster key there (read-only bind mount), so no key is ever baked into the image.
set -Eeuo pipefail

VERSION=1
CACHE_DIR=${CMFLOW_VM_CACHE:-/var/cache/cmflow-test-vm}
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
PACKAGES=openssh-server,sudo,python3,procps
log() { printf '[dockerns] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

names() {
  [[ -n ${1:-} ]] || die "WORKDIR missing"
  WORKDIR=$(realpath -m -- "$1")
  case $WORKDIR in /|/tmp|/var|/root|/home|/usr|/etc) die "refusing WORKDIR=$WORKDIR";; esac
  ID=$(printf '%s' "$WORKDIR" | sha1sum | cut -c1-8)
  NS=cmfvm-$ID
  RUNDIR=/run/cmfvm-$ID             # short: unix socket paths must stay < 108 bytes
  SOCK=$RUNDIR/docker.sock
  PIDFILE=$RUNDIR/dockerd.pid
  CGPARENT=/cmfvm-$ID
  export DOCKER_HOST=unix://$SOCK DOCKER_BUILDKIT=0 PATH=$RUNDIR/bin:$PATH
}

install_deps() {
  local need=()
  command -v vagrant >/dev/null || need+=(vagrant)
  [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v ip >/dev/null || need+=(iproute2)
  [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
  ((${#need[@]})) || return 0
  log "installing ${need[*]}"
  local made_policy=0
  # never let docker.io's postinst start a host dockerd (docker0 = 172.17/16 on the real network)
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "${need[@]}" >&2 || {
    "${apt[@]}" update -q >&2
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "${need[@]}" >&2; }
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  return 0
}

start() {
  ip netns list | grep -qw "$NS" && die "netns $NS exists (run: $0 down $WORKDIR)"
  mkdir -p "$WORKDIR/docker" "$RUNDIR/exec" "$RUNDIR/bin"
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ln -sf /usr/bin/docker "$RUNDIR/bin/docker"
  printf '{"deprecated-key-path": "%s"}\n' "$RUNDIR/key.json" > "$RUNDIR/daemon.json"
  nsenter --net="/run/netns/$NS" setsid /usr/sbin/dockerd \
      --data-root "$WORKDIR/docker" --exec-root "$RUNDIR/exec" --pidfile "$PIDFILE" \
      -H "unix://$SOCK" --config-file "$RUNDIR/daemon.json" \
      --bip 198.18.0.1/24 --default-address-pool base=198.19.0.0/16,size=24 \
      --iptables=false --ip-masq=false --userland-proxy=false --dns 127.0.0.1 \
      --cgroup-parent "$CGPARENT" --exec-opt native.cgroupdriver=cgroupfs --log-level warn \
      > "$WORKDIR/dockerd.log" 2>&1 < /dev/null &
  local i
  for ((i = 0; i < 300; i++)); do
    docker version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  tail -n 30 "$WORKDIR/dockerd.log" >&2; die "dockerd did not answer"
}

mirror() {
  local f m=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    m=$(awk -v s="$SUITE" '
      function flush() { if (!d && t && en && su && u != "") { print u; d=1; exit } t=0; en=1; su=0; u="" }
      BEGIN { en=1 }
      /^[ \t]*$/ { flush(); next }
      /^Types:/   { t = ($0 ~ /[: ]deb( |$)/) }
      /^Enabled:/ { en = ($2 !~ /^no$/) }
      /^URIs:/    { u = $2 }
      /^Suites:/  { for (i = 2; i <= NF; i++) if ($i == s) su = 1 }
      END { flush() }' "$f")
    [[ -n $m ]] && break
  done
  if [[ -z $m ]]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -r $f ]] || continue
      m=$(sed -E 's/\[[^]]*\]//' "$f" | awk -v s="$SUITE" '$1=="deb" && $3==s {print $2; exit}')
      [[ -n $m ]] && break
    done
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

TAG=""
image() {   # load the cached node image, building it first if needed; sets TAG
  TAG=cmflow-vm-node:$SUITE-$(printf '%s|%s|%s' "$VERSION" "$SUITE" "$PACKAGES" | sha1sum | cut -c1-10)
  local tar=$CACHE_DIR/${TAG//:/_}.tar
  mkdir -p "$CACHE_DIR"
  exec 9> "$CACHE_DIR/.lock"; flock 9          # runs side by side build it once
  if [[ ! -s $tar ]]; then
    local rootfs; rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX"); chmod 755 "$rootfs"
    log "debootstrap $SUITE with $PACKAGES (once; cached in $CACHE_DIR)"
    if ! timeout 1800 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$(mirror)" \
          > "$CACHE_DIR/debootstrap.log" 2>&1 < /dev/null; then
      tail -n 30 "$CACHE_DIR/debootstrap.log" >&2
      awk -v r="$rootfs/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
      rm -rf --one-file-system "$rootfs"; die "debootstrap failed"
    fi
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
           "$rootfs"/etc/ssh/ssh_host_* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    : > "$rootfs/etc/hostname"; : > "$rootfs/etc/resolv.conf"
    tar --numeric-owner --xattrs -C "$rootfs" -c . | docker import - "cmflow-vm-rootfs:$ID" >/dev/null
    rm -rf --one-file-system "$rootfs"
    local ctx; ctx=$(mktemp -d)
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
ARG ROOTFS
FROM ${ROOTFS}
RUN set -eu; \
    useradd -m -u 1000 -s /bin/bash vagrant; usermod -p '*' vagrant; \
    echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/vagrant; chmod 0440 /etc/sudoers.d/vagrant; \
    install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh; \
    sed -ri 's/^(session[[:space:]]+)required([[:space:]]+pam_loginuid\.so)/\1optional\2/' /etc/pam.d/sshd; \
    printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\nUseDNS no\nMaxStartups 200:30:400\nMaxSessions 100\n' > /etc/ssh/sshd_config.d/cmflow.conf; \
    mkdir -p /run/sshd
EXPOSE 22
CMD ["/bin/sh", "-c", "ssh-keygen -A >/dev/null && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"]
DOCKERFILE
    docker build -q --build-arg "ROOTFS=cmflow-vm-rootfs:$ID" -t "$TAG" "$ctx" >/dev/null
    rm -rf "$ctx"
    docker save -o "$tar.tmp" "$TAG" && mv "$tar.tmp" "$tar"
    docker rmi "cmflow-vm-rootfs:$ID" >/dev/null 2>&1 || true
  else
    docker load -q -i "$tar" >/dev/null
  fi
  exec 9>&-
}

our_pids() { { grep -a -l -E "${RUNDIR}[/]exec" /proc/[0-9]*/cmdline 2>/dev/null || true; } | awk -F/ '{print $3}'; }

down() {
  local pid p i
  if docker version >/dev/null 2>&1; then
    p=$(docker ps -aq); [[ -z $p ]] || docker rm -f $p >/dev/null 2>&1 || true
  fi
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if [[ -n $pid && -d /proc/$pid ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "--exec-root $RUNDIR/exec"; then
    kill -TERM "$pid"
    for ((i = 0; i < 300; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true
  fi
  if [[ -e /run/netns/$NS ]]; then
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  fi
  # container processes live in their own netns: find orphans through our private cgroup parent
  for p in $(for cg in /sys/fs/cgroup/*"$CGPARENT"; do [[ -d $cg ]] && find "$cg" -name cgroup.procs -exec cat {} +; done 2>/dev/null | sort -un); do
    kill -KILL "$p" 2>/dev/null || true
  done
  for i in $(seq 1 50); do
    p=$(our_pids); [[ -z $p ]] && break
    ((i == 30)) && kill -KILL $p 2>/dev/null || true
    sleep 0.1
  done
  [[ -e /run/netns/$NS ]] && ip netns del "$NS"
  awk -v w="$WORKDIR/" -v r="$RUNDIR/" 'index($2, w) == 1 || index($2, r) == 1 {print $2}' /proc/mounts \
    | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
  for i in 1 2 3 4 5; do
    find /sys/fs/cgroup -maxdepth 3 -depth -type d -path "*${CGPARENT}*" -exec rmdir {} \; 2>/dev/null || true
    find /sys/fs/cgroup -maxdepth 3 -type d -path "*${CGPARENT}*" 2>/dev/null | grep -q . || break
    sleep 0.3
  done
  rm -rf --one-file-system "$RUNDIR" "$WORKDIR"
}

leaks() {  # prints what is left of an environment; nothing when it is gone
  ip netns list | grep -w "$NS" || true
  grep -E " ($WORKDIR|$RUNDIR)[/ ]" /proc/mounts || true
  find /sys/fs/cgroup -maxdepth 3 -type d -path "*${CGPARENT}*" 2>/dev/null || true
  our_pids
  [[ ! -e $WORKDIR ]] || echo "$WORKDIR"
}

[[ $EUID -eq 0 ]] || die "must run as root (network namespaces, dockerd)"
case ${1:-} in
  up)   names "${2:-}"; install_deps; trap 'rc=$?; ((rc)) && down; exit $rc' EXIT
        start; image; trap - EXIT
        printf 'NETNS=%s\nDOCKER_HOST=%s\nIMAGE=%s\nDOCKER_PATH=%s\n' "$NS" "$DOCKER_HOST" "$TAG" "$RUNDIR/bin" ;;
  down) names "${2:-}"; down ;;
  leaks) names "${2:-}"; leaks ;;
  deps) install_deps ;;
  build-image) install_deps; names "$(mktemp -d /tmp/cmfvm-build.XXXXXX)"; trap 'down' EXIT; start; image ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
