#!/usr/bin/env bash
# Installs what podwarden's demo and tests need on a fresh Debian machine, then the
# Python environment in .venv. Safe to run again. As root it installs system packages,
# configures podman 4.x for this kind of machine and creates the rootless test user;
# without root it only builds .venv and says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOTLESS_USER=pwtest
PACKAGES=(podman runc uidmap slirp4netns openssh-server openssh-client busybox-static procps python3-venv chromium prometheus)

say() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" = 0 ]; then
    missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # podman 4.3 on these machines: runc (crun fails on the hybrid cgroup layout),
    # cgroupfs (no systemd), file events, default ulimits below the hard limit.
    mkdir -p /etc/containers
    if [ ! -f /etc/containers/containers.conf ] || ! grep -q 'podwarden' /etc/containers/containers.conf; then
        [ -f /etc/containers/containers.conf ] && cp /etc/containers/containers.conf /etc/containers/containers.conf.before-podwarden
        cat > /etc/containers/containers.conf <<'CONF'
# written by podwarden scripts/setup.sh (previous file kept as containers.conf.before-podwarden)
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
        say "wrote /etc/containers/containers.conf"
    fi
    if ! id "$ROOTLESS_USER" >/dev/null 2>&1; then
        useradd -m -s /bin/sh "$ROOTLESS_USER"
        say "created rootless test user $ROOTLESS_USER"
    fi
    usermod -p '*' "$ROOTLESS_USER"   # sshd refuses a locked account even for key logins
    grep -q "^$ROOTLESS_USER:" /etc/subuid || echo "$ROOTLESS_USER:200000:65536" >> /etc/subuid
    grep -q "^$ROOTLESS_USER:" /etc/subgid || echo "$ROOTLESS_USER:200000:65536" >> /etc/subgid
    mkdir -p /run/sshd
else
    for tool in podman runc newuidmap /usr/sbin/sshd busybox; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || say "missing: $tool (run this script as root to install it)"
    done
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[test]"
say "ready: .venv/bin/podwarden"
