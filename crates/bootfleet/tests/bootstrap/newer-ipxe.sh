#!/usr/bin/env bash
# An iPXE EFI loader that runs autoexec.ipxe (iPXE >= 1.21.1), for the
# bootstrap-media tests' UEFI boots: Debian 12's own ipxe.efi (2019) does
# not. Downloads Debian 13's ipxe package with apt (a private source list
# and state directory: nothing is installed, the system's apt sources are
# left alone) and copies its x86-64 EFI loader to $1/ipxe.efi.
#   newer-ipxe.sh target/boot-assets/ipxe-trixie
set -euo pipefail
out=${1:?usage: newer-ipxe.sh OUTPUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -s "$out/ipxe.efi" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  > "$tmp/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
  -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Sandbox::User=root")
apt-get "${apt_opts[@]}" update -qq
(cd "$tmp" && apt-get "${apt_opts[@]}" download -qq ipxe)
dpkg -x "$tmp"/ipxe_*.deb "$tmp/root"
efi="$tmp/root/usr/lib/ipxe/ipxe-amd64.efi"
[ -s "$efi" ] || efi="$tmp/root/usr/lib/ipxe/ipxe.efi"
grep -q 'autoexec.ipxe' "$efi" || { echo "newer-ipxe.sh: $efi does not run autoexec.ipxe" >&2; exit 1; }
cp "$efi" "$out/ipxe.efi.partial"
mv "$out/ipxe.efi.partial" "$out/ipxe.efi"
