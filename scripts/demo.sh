#!/usr/bin/env bash
# A one-command demo: brings up a lab (two network namespaces on
# 198.18.99.0/24, never the host's interfaces), runs `bootfleet up` in one,
# network-boots a QEMU VM in the other through DHCP → iPXE → boot script →
# kernel over HTTP, shows each step, and tears everything down.
#
#   scripts/demo.sh          # SeaBIOS + iPXE ROM
#   scripts/demo.sh uefi     # OVMF, PXE → ipxe.efi over TFTP
#
# Run as root on Debian 12. Installs QEMU/OVMF/iPXE and builds Bootfleet.
set -euo pipefail
cd "$(dirname "$0")/.."
firmware=${1:-bios}
root=$(pwd)
server=bfdA
client=bfdB
mac=52:54:00:00:99:01
token=demo-token-0123456789abcdef

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "boot assets (iPXE loaders, a Debian kernel, a busybox initramfs) and QEMU"
scripts/install-deps.sh test >/dev/null
scripts/boot-assets.sh >/dev/null
assets=$root/target/boot-assets
step "building bootfleet (release)"
cargo build --release --locked -q -p bootfleet
bootfleet=$root/target/release/bootfleet

work=$(mktemp -d)
cleanup() {
  for ns in $server $client; do
    for pid in $(ip netns pids $ns 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 1
  for ns in $server $client; do
    for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del $ns 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

step "lab network: $server (Bootfleet, 198.18.99.1) <-> $client (bridge with the VM's tap)"
ip netns add $server
ip netns add $client
ip link add $server-dB netns $server type veth peer name $client-dA netns $client
ip -n $server addr add 198.18.99.1/24 dev $server-dB
for ns in $server $client; do ip -n $ns link set lo up; done
ip -n $server link set $server-dB up
ip netns exec $client sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip -n $client link add br0 type bridge
ip -n $client link set $client-dA master br0
ip -n $client link set $client-dA up
ip -n $client link set br0 up
ip -n $client tuntap add dev tap0 mode tap
ip -n $client link set tap0 master br0
ip -n $client link set tap0 up

step "bootfleet up: rules engine, TFTP, image streamer, full DHCP on $server-dB (embedded store)"
mkdir -p "$work/tftp"
cp "$assets"/{undionly.kpxe,ipxe.efi,snponly.efi} "$work/tftp/"
cat > "$work/bootfleet.toml" <<EOF
[store]
backend = "embedded"
data_dir = "$work/data"
[admin]
listen = "127.0.0.1:9100"
[rules]
listen = "127.0.0.1:7070"
admin_token = "$token"
[tftp]
listen = "198.18.99.1:69"
root = "$work/tftp"
[streamer]
listen = "198.18.99.1:8080"
grpc_listen = "127.0.0.1:7072"
admin_token = "$token"
loaders_dir = "$work/tftp"
[dhcp]
mode = "full"
interfaces = ["$server-dB"]
server_ip = "198.18.99.1"
http_base = "http://198.18.99.1:8080"
rules_url = "http://127.0.0.1:7070"
router_advertisements = true
[[dhcp.pools]]
subnet = "198.18.99.0/24"
start = "198.18.99.100"
end = "198.18.99.150"
lease_time = "10m"
EOF
ip netns exec $server "$bootfleet" up -c "$work/bootfleet.toml" --log warn &
disown
for _ in $(seq 100); do
  ip netns exec $server curl -sf 127.0.0.1:9100/healthz >/dev/null 2>&1 && break
  sleep 0.2
done
ip netns exec $server curl -s 127.0.0.1:9100/healthz

step "pushing the image tiny/1 (kernel + initramfs) to the streamer"
mkdir -p "$work/image"
cp "$assets"/vmlinuz "$assets"/initrd.img "$work/image/"
echo "$token" > "$work/token"
ip netns exec $server "$bootfleet" images push "$work/image" --image tiny --version 1 --token-file "$work/token"

step "rules: machines 52:54:00:00:99:* boot tiny with marker hello-from-bootfleet"
cat > "$work/rules.yaml" <<'EOF'
image_profiles:
  - name: tiny
    kernel:
      kernel: tiny/1/vmlinuz
      initrds: [tiny/1/initrd.img]
      cmdline: "console=ttyS0 quiet bootfleet.marker={{host.marker}}"
host_profiles:
  - { name: demo, values: { marker: hello-from-bootfleet } }
rules:
  - { name: demo-vms, match: { mac: "52:54:00:00:99:*" }, image_profile: tiny, host_profile: demo }
EOF
ip netns exec $server "$bootfleet" apply -f "$work/rules.yaml" --activate --token "$token"

step "the boot script this machine will get"
ip netns exec $server curl -s "http://198.18.99.1:8080/boot.ipxe?mac=$mac"

step "booting a $firmware VM ($mac) from the network (QEMU, TCG)"
qemu=(qemu-system-x86_64 -accel tcg -nodefaults -vga none -display none -no-reboot
  -serial "file:$work/serial.log" -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
if [ "$firmware" = uefi ]; then
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  qemu+=(-machine q35 -m 512
    -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
    -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd"
    -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=1")
else
  qemu+=(-m 256 -boot n -device "e1000,netdev=n0,mac=$mac,bootindex=1")
fi
start=$(date +%s%N)
ip netns exec $client "${qemu[@]}" &
disown
for _ in $(seq 600); do
  grep -aq BOOTFLEET-MARKER "$work/serial.log" 2>/dev/null && break
  sleep 0.2
done
end=$(date +%s%N)
grep -a BOOTFLEET-MARKER "$work/serial.log" || { echo "no marker; serial:"; cat "$work/serial.log"; exit 1; }
echo "booted in $(( (end - start) / 1000000 )) ms"

step "what Bootfleet recorded about the host"
sleep 1
ip netns exec $server "$bootfleet" hosts get $mac

step "tearing the lab down"
