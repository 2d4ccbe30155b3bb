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
# DHCP peers and perfdhcp. Installing Kea would start its daemon: a
# policy-rc.d that refuses service starts is put in place first.
if ! command -v perfdhcp >/dev/null || ! command -v kea-dhcp4 >/dev/null || ! command -v dnsmasq >/dev/null; then
  created_policy=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=yes
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends kea-admin kea-dhcp4-server dnsmasq-base >/dev/null
  [ "$created_policy" = yes ] && rm -f /usr/sbin/policy-rc.d
  # The packaged services must not run on this machine's interfaces.
  systemctl disable --now kea-dhcp4-server 2>/dev/null || true
fi
# HTTP peer and load generator for the image-streamer benchmark; nginx's
# packaged service is kept from starting the same way.
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  created_policy=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=yes
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx wrk >/dev/null
  [ "$created_policy" = yes ] && rm -f /usr/sbin/policy-rc.d
  systemctl disable --now nginx 2>/dev/null || true
fi
echo "peers in $peers: $(ls "$peers/usr/sbin"), perfdhcp, kea-dhcp4, dnsmasq, nginx, wrk"
