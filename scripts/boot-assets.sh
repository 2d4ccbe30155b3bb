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
#   modules/                             the kernel's modules the initramfs
#                                        images load, and their load order
#   vdisk-initrd.img                     the vDisk initramfs: /init is
#                                        boot/initramfs/bootfleet-vdisk.sh,
#                                        with bootfleet-nbd-attach (built
#                                        here) and nbd.ko, ext4.ko,
#                                        overlay.ko (root over NBD; writes in
#                                        RAM or the streamer's write cache)
#   vdisk-root.ext4                      a golden root filesystem for it: its
#                                        /sbin/init prints "BOOTFLEET-VDISK
#                                        <value of /etc/bootfleet-vdisk-value>
#                                        root=<fs type of />
#                                        scratch=absent|present"
# Also installs QEMU with its iPXE NIC ROMs and OVMF. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/boot-assets}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export DEBIAN_FRONTEND=noninteractive

need=()
for pkg in qemu-system-x86 ipxe-qemu ipxe ovmf busybox-static cpio syslinux mtools dosfstools \
  kmod e2fsprogs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for loader in undionly.kpxe ipxe.efi snponly.efi; do
  cp /usr/lib/ipxe/"$loader" "$out/$loader"
done

# Kernel modules the initramfs images load (dependencies are added): QEMU's
# e1000 NIC; for the vDisk initramfs NBD, ext4 (its checksums need crc32c,
# which it asks the crypto API for rather than depending on a module) and
# overlayfs.
modules="e1000 nbd crc32c_generic ext4 overlay"
modules_wanted() {
  [ -s "$out/modules/order" ] || return 1
  for module in $modules; do
    grep -qx "$module" "$out/modules/order" || return 1
  done
}
if [ ! -s "$out/vmlinuz" ] || ! modules_wanted; then
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
  # Kernel and modules from one package, replaced together (a module
  # loads only into the kernel it was built for).
  rm -rf "$out/modules"
  mkdir "$out/modules"
  # Copies a module after its dependencies (modinfo's "depends") and
  # appends its name to modules/order.
  add_module() {
    local name=$1 file dep
    grep -qx "$name" "$out/modules/order" 2>/dev/null && return 0
    file=$(find "$tmp/root/lib/modules" \( -name "$name.ko" -o -name "${name//_/-}.ko" \) | head -1)
    [ -n "$file" ] || { echo "kernel package $kernel_pkg has no module $name" >&2; exit 1; }
    for dep in $(modinfo -F depends "$file" | tr ',' ' '); do
      add_module "$dep"
    done
    cp "$file" "$out/modules/$name.ko"
    echo "$name" >> "$out/modules/order"
  }
  for module in $modules; do
    add_module "$module"
  done
  cp "$tmp"/root/boot/vmlinuz-* "$out/vmlinuz"
  # The NIC driver the marker initramfs loads to report back.
  cp "$out/modules/e1000.ko" "$out/e1000.ko"
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

# The vDisk initramfs: busybox, bootfleet-nbd-attach, the modules, and
# Bootfleet's module as /init. bootfleet-nbd-attach (crates/nbd) negotiates
# the export, hands the socket to the kernel over netlink and moves it to
# another replica when the connection dies; it is copied with the
# libraries ldd names.
cargo build --release --quiet -p bootfleet-nbd --bin bootfleet-nbd-attach
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
attach_bin=$target_dir/release/bootfleet-nbd-attach
stage=$(mktemp -d)
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,run,lib/modules}
cp /bin/busybox "$stage/bin/busybox"
cp "$attach_bin" "$stage/sbin/bootfleet-nbd-attach"
strip "$stage/sbin/bootfleet-nbd-attach" 2>/dev/null || true
for lib in $(ldd "$attach_bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
cp "$out"/modules/*.ko "$out/modules/order" "$stage/lib/modules/"
cat > "$stage/bin/dhcp-script" <<'SCRIPT'
#!/bin/busybox sh
case "$1" in
  bound|renew) /bin/busybox ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up ;;
esac
exit 0
SCRIPT
chmod 755 "$stage/bin/dhcp-script"
install -m 755 boot/initramfs/bootfleet-vdisk.sh "$stage/init"
(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -9 > "$out/vdisk-initrd.img")
rm -rf "$stage"

# The golden root filesystem the vDisk initramfs mounts: an 8 MiB ext4 at
# 4 KiB blocks (as NBD devices have), holding busybox, a value random per
# build (so only this image can print it) and an /sbin/init that prints it.
# With bootfleet.then=write-reboot it then writes /var/bootfleet-scratch and
# reboots if the file was absent (with the client-ram and server write
# caches it is absent again after every reboot), and powers off otherwise.
stage=$(mktemp -d)
mkdir -p "$stage"/{bin,sbin,etc,dev,proc,sys,run,tmp,var}
cp /bin/busybox "$stage/bin/busybox"
echo "golden-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')" > "$stage/etc/bootfleet-vdisk-value"
cat > "$stage/sbin/init" <<'INIT'
#!/bin/busybox sh
bb=/bin/busybox
value=$($bb cat /etc/bootfleet-vdisk-value)
root=$($bb awk '$2 == "/" {fs = $3} END {print fs}' /proc/mounts)
scratch=absent
[ -e /var/bootfleet-scratch ] && scratch=present
echo "BOOTFLEET-VDISK $value root=$root scratch=$scratch"
then=poweroff
for word in $($bb cat /proc/cmdline); do
  case "$word" in
    bootfleet.then=*) then="${word#bootfleet.then=}" ;;
  esac
done
if [ "$then" = write-reboot ] && [ "$scratch" = absent ]; then
  echo "boot $($bb cat /proc/sys/kernel/random/boot_id)" > /var/bootfleet-scratch
  $bb sync
  echo "BOOTFLEET-VDISK-WROTE $($bb cat /var/bootfleet-scratch)"
  $bb reboot -f
fi
$bb sync
$bb poweroff -f
INIT
chmod 755 "$stage/sbin/init"
rm -f "$out/vdisk-root.ext4"
truncate -s 8M "$out/vdisk-root.ext4"
mkfs.ext4 -q -F -b 4096 -L bootfleet-root -d "$stage" "$out/vdisk-root.ext4"
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
