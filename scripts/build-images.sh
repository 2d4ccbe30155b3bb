#!/usr/bin/env bash
# Builds the container images, one per service plus the `bootfleet` CLI:
#   localhost/bootfleet/{rules-engine,tftp-server,image-streamer,dhcp-responder,cli}:TAG
# Usage: scripts/build-images.sh [--debug | --bin-dir DIR] [--base IMAGE] [--tag TAG] [--peers]
# --peers also builds localhost/bootfleet/{etcd,dnsmasq}:TAG from this
# machine's etcd and dnsmasq (for the compose stack without a registry).
# Without --base, a base assembled from this machine (scripts/local-base.sh)
# is used; pass e.g. --base gcr.io/distroless/cc-debian12:nonroot where a
# registry is reachable. Run as root with podman.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
bin=
base=
tag=dev
peers=no
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --bin-dir) profile=prebuilt; bin=$2; shift ;;
    --base) base=$2; shift ;;
    --tag) tag=$2; shift ;;
    --peers) peers=yes ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
services=(bootfleet-rules-engine bootfleet-tftp-server bootfleet-image-streamer bootfleet-dhcp-responder)
if [ "$profile" = release ]; then
  cargo build --release --locked -q -p bootfleet -p bootfleet-rules-engine -p bootfleet-tftp-server \
    -p bootfleet-image-streamer -p bootfleet-dhcp-responder
fi
[ -n "$bin" ] || bin=target/$profile
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/var"
echo "Bootfleet state and images" > "$context/var/README"
for b in "${services[@]}" bootfleet; do
  cp "$bin/$b" "$context/bin/$b"
  # Line tables help backtraces on the build machine, not in the image.
  if command -v strip >/dev/null; then strip --strip-debug "$context/bin/$b"; fi
done
extra=()
if [ "$peers" = yes ]; then
  cp /usr/bin/etcd /usr/sbin/dnsmasq "$context/bin/"
  extra=(/usr/bin/etcd /usr/sbin/dnsmasq)
fi
if [ -z "$base" ]; then
  base=$(scripts/local-base.sh localhost/bootfleet-base:local "${services[@]/#/$bin/}" "$bin/bootfleet" "${extra[@]}")
fi
for service in "${services[@]}"; do
  name=${service#bootfleet-}
  user=65532
  [ "$name" = dhcp-responder ] && user=0
  podman build --quiet --format docker -f deploy/containers/Containerfile --build-arg BASE="$base" \
    --build-arg SERVICE="$service" --build-arg USER=$user -t "localhost/bootfleet/$name:$tag" "$context" >/dev/null
done
podman build --quiet --format docker -f deploy/containers/Containerfile.cli --build-arg BASE="$base" \
  -t "localhost/bootfleet/cli:$tag" "$context" >/dev/null
if [ "$peers" = yes ]; then
  for tool in etcd dnsmasq; do
    podman build --quiet --format docker -f deploy/containers/Containerfile.peer --build-arg BASE="$base" \
      --build-arg TOOL=$tool -t "localhost/bootfleet/$tool:$tag" "$context" >/dev/null
  done
fi
# A rebuild leaves the replaced images untagged; remove ours (only ours), or
# repeated builds fill the disk.
podman image prune --force --filter label=org.bootfleet.image=true >/dev/null
podman images --format "{{.Repository}}:{{.Tag}} {{.Size}}" | grep "^localhost/bootfleet/.*:$tag " | sort
