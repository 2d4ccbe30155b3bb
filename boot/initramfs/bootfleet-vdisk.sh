#!/bin/busybox sh
# Bootfleet's vDisk initramfs module: the /init of a busybox initramfs that
# runs a diskless Linux from a read-only golden disk streamed over NBD.
#
# Kernel command line (the boot script's profile puts it there):
#   bootfleet.nbd=HOST:PORT[,HOST:PORT...]  NBD replicas holding the image,
#                                           tried in this order
#   bootfleet.export=NAME                   the export: a catalog file for
#                                           client-ram (debian/12/root.ext4),
#                                           host/<mac> for server
#   bootfleet.cache=client-ram|server       the write cache (PVS's names)
#   bootfleet.rootfstype=ext4               the root filesystem (default ext4)
#   bootfleet.nbd-timeout=SECONDS           a request unanswered this long
#                                           means its connection is dead
#                                           (default 1)
#   bootfleet.nbd-dead-timeout=SECONDS      how long I/O waits for any
#                                           replica before it fails
#                                           (default 3600)
#   bootfleet.ip=ADDRESS/PREFIX             a static address for eth0
#                                           instead of DHCP
#
# client-ram: the export is read-only, every write lands in a tmpfs overlaid
# on it (overlayfs), so nothing is stored on the server, any replica can
# serve any client, and the writes are gone at the next boot.
# server: the streamer keeps this boot's writes in the host's write cache;
# the root is mounted read-write straight from the export. The module adds
# the kernel's boot id to the name (host/<mac>/<boot id>), which tells the
# streamer a new boot (a fresh cache) from a reconnect.
#
# Replicas: /sbin/bootfleet-nbd-attach attaches /dev/nbd0 to the first
# replica that serves the export and stays in the background (it outlives
# switch_root). When the connection dies, the kernel holds the device's
# I/O and tells it (NBD_CMD_LINK_DEAD over netlink); it negotiates the
# export with the next replica and hands the kernel the new socket
# (NBD_CMD_RECONFIGURE), so applications see a pause, not an I/O error.
# client-ram moves to any replica (they all hold the same read-only
# file); server stays with its replica, where its write cache is.
#
# The initramfs holds busybox (/bin/busybox), bootfleet-nbd-attach with its
# libraries, and the kernel modules under /lib/modules in load order
# (/lib/modules/order, dependencies first). scripts/boot-assets.sh builds it.
bb=/bin/busybox

$bb mount -t proc proc /proc
$bb mount -t devtmpfs devtmpfs /dev
$bb mount -t sysfs sysfs /sys
# The kernel starts /init with no console open (the initramfs has no
# /dev/console node); everything from here on, the root's init included,
# writes to it.
exec </dev/console >/dev/console 2>&1

say() { echo "bootfleet-vdisk: $*"; }

# Stops the boot where it failed: the console says why, and the machine
# powers off rather than spin (a diskless machine has nothing else to boot).
fail() {
  say "FAILED: $*"
  $bb sleep 2
  $bb poweroff -f
}

replicas=
export_name=
cache=client-ram
fstype=ext4
nbd_timeout=1
nbd_dead_timeout=3600
static_ip=
for word in $($bb cat /proc/cmdline); do
  case "$word" in
    bootfleet.nbd=*) replicas="${word#bootfleet.nbd=}" ;;
    bootfleet.export=*) export_name="${word#bootfleet.export=}" ;;
    bootfleet.cache=*) cache="${word#bootfleet.cache=}" ;;
    bootfleet.rootfstype=*) fstype="${word#bootfleet.rootfstype=}" ;;
    bootfleet.nbd-timeout=*) nbd_timeout="${word#bootfleet.nbd-timeout=}" ;;
    bootfleet.nbd-dead-timeout=*) nbd_dead_timeout="${word#bootfleet.nbd-dead-timeout=}" ;;
    bootfleet.ip=*) static_ip="${word#bootfleet.ip=}" ;;
  esac
done
[ -n "$replicas" ] || fail "no bootfleet.nbd= on the kernel command line"
[ -n "$export_name" ] || fail "no bootfleet.export= on the kernel command line"
case "$cache" in
  client-ram) attach_mode=--read-only ;;
  server)
    attach_mode=--same-replica
    export_name="$export_name/$($bb cat /proc/sys/kernel/random/boot_id)"
    ;;
  *) fail "write cache '$cache' is not supported by this initramfs (client-ram or server)" ;;
esac

# Modules in the order the build wrote (dependencies first). nbds_max=1:
# one device is all a diskless root needs.
while read -r module; do
  case "$module" in
    nbd) $bb insmod "/lib/modules/$module.ko" nbds_max=1 ;;
    *) $bb insmod "/lib/modules/$module.ko" ;;
  esac || fail "cannot load $module.ko"
done < /lib/modules/order

# The network: the static address if the command line gives one, else
# DHCP on eth0, retried (bounded: about a minute) while the link comes up
# or the boot services answer late.
$bb ifconfig lo 127.0.0.1 up
$bb ifconfig eth0 up || fail "no eth0"
if [ -n "$static_ip" ]; then
  $bb ip addr add "$static_ip" dev eth0 || fail "cannot give eth0 the address $static_ip"
else
  leased=
  for attempt in $($bb seq 20); do
    if $bb udhcpc -i eth0 -n -q -t 3 -T 1 -s /bin/dhcp-script >/dev/null 2>&1; then
      leased=yes
      break
    fi
  done
  [ -n "$leased" ] || fail "no DHCP lease on eth0"
fi

# Attach /dev/nbd0 to the first replica that serves the export (it says
# which on the console, and why it skipped the others); in client-ram mode
# the device is read-only.
# It runs as "@bootfleet-nbd-attach" (argv[0], through a link on the
# PATH): systemd's shutdown spares processes whose argv[0] starts with "@",
# the convention for daemons the root file system depends on.
$bb ln -sf bootfleet-nbd-attach /sbin/@bootfleet-nbd-attach
PATH=/sbin @bootfleet-nbd-attach --replicas "$replicas" --export "$export_name" --device 0 $attach_mode \
  --request-timeout "$nbd_timeout" --dead-timeout "$nbd_dead_timeout" ||
  fail "no replica in '$replicas' serves $export_name"

$bb mkdir -p /run/root
if [ "$cache" = client-ram ]; then
  # The golden disk read-only below, a RAM upper layer above.
  $bb mkdir -p /run/lower /run/ram
  $bb mount -t "$fstype" -o ro /dev/nbd0 /run/lower || fail "cannot mount $export_name ($fstype)"
  $bb mount -t tmpfs -o mode=0755 tmpfs /run/ram
  $bb mkdir -p /run/ram/upper /run/ram/work
  $bb mount -t overlay -o lowerdir=/run/lower,upperdir=/run/ram/upper,workdir=/run/ram/work overlay /run/root ||
    fail "cannot put the RAM overlay on $export_name"
else
  $bb mount -t "$fstype" /dev/nbd0 /run/root || fail "cannot mount $export_name ($fstype)"
fi

init=/sbin/init
[ -x "/run/root$init" ] || fail "$export_name has no $init"
for fs in dev proc sys; do
  $bb mkdir -p "/run/root/$fs"
  $bb mount --move "/$fs" "/run/root/$fs"
done
exec $bb switch_root /run/root "$init"
