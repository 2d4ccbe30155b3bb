#!/usr/bin/env bash
# Unpacks peer servers used by the benchmarks into target/peers without
# installing them as services (tftpd-hpa's package would start a TFTP
# daemon on every interface). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=target/peers
mkdir -p "$peers"
export DEBIAN_FRONTEND=noninteractive
if [ ! -x "$peers/usr/sbin/in.tftpd" ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends libwrap0 >/dev/null
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download tftpd-hpa >/dev/null 2>&1)
  dpkg -x "$tmp"/tftpd-hpa_*.deb "$peers"
  rm -rf "$tmp"
fi
echo "peers in $peers: $(ls "$peers/usr/sbin")"
