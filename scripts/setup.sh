#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine (run as root), then runs
# the main job (--demo) or the whole test suite (--test). Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  clang llvm libbpf-dev bpftool iproute2 nftables python3-venv
  iperf3 dante-server tinyproxy dnsmasq unbound dnsperf redsocks curl openssl util-linux procps
  shadowsocks-libev trojan v2ray
  simple-obfs shadowsocks-v2ray-plugin  # SIP003 plugins (issue 11): both sides, in the lab
  chromium tmux  # operations (issue 14): the status page in headless Chromium, clashctl's TUI in tmux
)

install_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # The Debian packages of peers start services on install; the lab starts its own copies.
  for svc in danted tinyproxy dnsmasq redsocks; do
    (command -v systemctl >/dev/null && systemctl disable --now "$svc" 2>/dev/null) || true
    pkill -x "$svc" 2>/dev/null || true
  done
  for svc in shadowsocks-libev trojan v2ray unbound; do  # by service only: the lab runs its own copies
    (command -v systemctl >/dev/null && systemctl disable --now "$svc" 2>/dev/null) || true
    [ -x "/etc/init.d/$svc" ] && { "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; }
  done
}

install_python() {
  local py=${PYTHON:-python3}
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
}

# The BPF filesystem: systemd mounts it at boot, but not every machine runs systemd as PID 1 (these
# VMs do not). Pinned maps and programs (tests, and iproute2's tc loader) need it.
mount_bpffs() {
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

mode=${1:---demo}
install_system
install_python
mount_bpffs
case "$mode" in
  --install) ;;
  --demo) exec .venv/bin/python -m dae_py.runtime.demo ;;
  --test) shift; exec .venv/bin/python -m pytest -p no:cacheprovider "$@" ;;
  *) echo "usage: $0 [--demo|--test|--install]" >&2; exit 2 ;;
esac
