#!/usr/bin/env bash
# Installs the Debian packages boxer-mesh builds and tests with (needs root). Quiet when all are present.
set -euo pipefail
packages=(
    libzmq3-dev libsodium-dev            # ZeroMQ (built with libsodium) for broker, node and tools
    protobuf-compiler protobuf-c-compiler libprotobuf-c-dev  # protoc(-c) and the shim's protobuf-c runtime
    iproute2 iptables iputils-ping       # the NAT lab: namespaces, veth, NAT (delay: NFQUEUE + python3)
    stun-client socat python3 procps     # real peers the tests talk to
    python3-protobuf python3-zmq python3-nacl  # the independent tap subscriber and the shim-protocol test app
    redis-server redis-tools iperf3 curl nginx-light  # unmodified apps the shim and lab tests run
    tshark                               # an independent reader of `tap --pcap` files (the capture lab test)
    busybox-static nats-server prometheus prometheus-node-exporter  # static and Go apps (the seccomp lab tests)
    cmake dpkg-dev                       # the function package's static libzmq, from Debian's source (scripts/static-deps.sh)
)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    apt-get update -qq
    # wireshark-common asks whether non-root users may capture; the answer here is no, and never a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
