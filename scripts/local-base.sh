#!/usr/bin/env bash
# Assembles a minimal glibc runtime image from this machine — the shared
# libraries Bootfleet's binaries link against, /etc/passwd with the nonroot
# user 65532, /tmp — for places where no image registry can be reached
# (like the test machine). Usage: scripts/local-base.sh [TAG] [BINARY...]
# Default tag: localhost/bootfleet-base:local. Run as root with podman.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/bootfleet-base:local}
shift || true
binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  binaries=(target/release/bootfleet)
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{etc,tmp,usr/local/bin,var/lib}
chmod 1777 "$root/tmp"
# Every library the binaries need, at the same paths, plus the loader.
for binary in "${binaries[@]}"; do
  ldd "$binary" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | grep '^/' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
echo "hosts: files dns" > "$root/etc/nsswitch.conf"
tar -C "$root" -cf - . | podman import --quiet --change "LABEL org.bootfleet.image=true" - "$tag" >/dev/null
echo "$tag"
