#!/usr/bin/env bash
# Boot assets for the lab and the end-to-end tests, in target/boot-assets
# (or the directory given as $1):
#   undionly.kpxe ipxe.efi snponly.efi   iPXE loaders (Debian package ipxe)
#   vmlinuz                              a Debian kernel, unpacked from its
#                                        package (never installed into /boot)
#   initrd.img                           a busybox initramfs whose /init prints
#                                        "BOOTFLEET-MARKER <bootfleet.marker=…>"
#                                        on the console and powers off
# Also installs QEMU with its iPXE NIC ROMs and OVMF. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/boot-assets}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export DEBIAN_FRONTEND=noninteractive

need=()
for pkg in qemu-system-x86 ipxe-qemu ipxe ovmf busybox-static cpio; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for loader in undionly.kpxe ipxe.efi snponly.efi; do
  cp /usr/lib/ipxe/"$loader" "$out/$loader"
done

if [ ! -s "$out/vmlinuz" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # The package the linux-image-amd64 metapackage points at today.
  kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$kernel_pkg" ]; then
    apt-get update -qq
    kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  (cd "$tmp" && apt-get download "$kernel_pkg" >/dev/null 2>&1)
  dpkg -x "$tmp"/"$kernel_pkg"_*.deb "$tmp/root"
  cp "$tmp"/root/boot/vmlinuz-* "$out/vmlinuz"
  rm -rf "$tmp"
  trap - EXIT
fi

# The initramfs: static busybox and an /init that reports and powers off.
stage=$(mktemp -d)
mkdir -p "$stage"/{bin,dev,proc,sys}
cp /bin/busybox "$stage/bin/busybox"
cat > "$stage/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
marker=none
for word in $(/bin/busybox cat /proc/cmdline); do
  case "$word" in
    bootfleet.marker=*) marker="${word#bootfleet.marker=}" ;;
  esac
done
echo "BOOTFLEET-MARKER $marker" > /dev/console
/bin/busybox sync
/bin/busybox poweroff -f
INIT
chmod 755 "$stage/init"
(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -9 > "$out/initrd.img")
rm -rf "$stage"
ls -l "$out"
