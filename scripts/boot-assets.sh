#!/usr/bin/env bash
# Boot assets for the lab and the end-to-end tests, in target/boot-assets
# (or the directory given as $1):
#   undionly.kpxe ipxe.efi snponly.efi   iPXE loaders (Debian package ipxe)
#   vmlinuz                              a Debian kernel, unpacked from its
#                                        package (never installed into /boot)
#   initrd.img                           a busybox initramfs whose /init prints
#                                        "BOOTFLEET-MARKER <bootfleet.marker=…>"
#                                        on the console and powers off; with
#                                        bootfleet.report=URL on the command
#                                        line it first brings up eth0 (DHCP,
#                                        retried) and reports
#                                        URL/<mac>/booted/<bootfleet.source>
#   disk.img                             a FAT disk (syslinux) booting the same
#                                        kernel and initramfs "from the local
#                                        disk": marker from-disk, source disk
# Also installs QEMU with its iPXE NIC ROMs and OVMF. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/boot-assets}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export DEBIAN_FRONTEND=noninteractive

need=()
for pkg in qemu-system-x86 ipxe-qemu ipxe ovmf busybox-static cpio syslinux mtools dosfstools; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for loader in undionly.kpxe ipxe.efi snponly.efi; do
  cp /usr/lib/ipxe/"$loader" "$out/$loader"
done

if [ ! -s "$out/vmlinuz" ] || [ ! -s "$out/e1000.ko" ]; then
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
  # The NIC driver the initramfs loads to report back (QEMU's e1000).
  cp "$(find "$tmp/root/lib/modules" -name e1000.ko | head -1)" "$out/e1000.ko"
  rm -rf "$tmp"
  trap - EXIT
fi

# The initramfs: static busybox and an /init that reports and powers off.
stage=$(mktemp -d)
mkdir -p "$stage"/{bin,dev,proc,sys,lib}
cp /bin/busybox "$stage/bin/busybox"
cp "$out/e1000.ko" "$stage/lib/e1000.ko"
cat > "$stage/bin/dhcp-script" <<'SCRIPT'
#!/bin/busybox sh
case "$1" in
  bound|renew) /bin/busybox ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up ;;
esac
exit 0
SCRIPT
chmod 755 "$stage/bin/dhcp-script"
cat > "$stage/init" <<'INIT'
#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t devtmpfs devtmpfs /dev
$bb mount -t sysfs sysfs /sys
marker=none
report=
source=network
for word in $($bb cat /proc/cmdline); do
  case "$word" in
    bootfleet.marker=*) marker="${word#bootfleet.marker=}" ;;
    bootfleet.report=*) report="${word#bootfleet.report=}" ;;
    bootfleet.source=*) source="${word#bootfleet.source=}" ;;
  esac
done
echo "BOOTFLEET-MARKER $marker" > /dev/console
if [ -n "$report" ]; then
  $bb insmod /lib/e1000.ko
  $bb sleep 1
  $bb ifconfig eth0 up
  mac=$($bb cat /sys/class/net/eth0/address)
  # Keep trying (bounded, ~3 min): the boot services may be down for now.
  for attempt in $($bb seq 60); do
    if $bb udhcpc -i eth0 -n -q -t 2 -T 1 -s /bin/dhcp-script >/dev/null 2>&1 &&
       $bb wget -q -O /dev/null "$report/$mac/booted/$source"; then
      echo "BOOTFLEET-REPORTED $source" > /dev/console
      break
    fi
    $bb sleep 2
  done
fi
$bb sync
$bb poweroff -f
INIT
chmod 755 "$stage/init"
(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -9 > "$out/initrd.img")
rm -rf "$stage"

# The "local disk": a FAT superfloppy with syslinux booting the same kernel.
rm -f "$out/disk.img"
mkfs.vfat -C "$out/disk.img" 32768 >/dev/null
syslinux --install "$out/disk.img"
cat > "$out/syslinux.cfg" <<'CFG'
DEFAULT disk
LABEL disk
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND console=ttyS0 quiet bootfleet.marker=from-disk bootfleet.source=disk bootfleet.report=http://198.18.65.1:8080/report
CFG
mcopy -i "$out/disk.img" "$out/vmlinuz" ::vmlinuz
mcopy -i "$out/disk.img" "$out/initrd.img" ::initrd.img
mcopy -i "$out/disk.img" "$out/syslinux.cfg" ::syslinux.cfg
rm -f "$out/syslinux.cfg"
ls -l "$out"
