#!/usr/bin/env bash
# Makes sure the network-namespace end-to-end tests (e2e/outbound, e2e/site) have what they need: `ip`
# (iproute2) for network namespaces and veth pairs, and `nft` (nftables) for the agent
# namespace's stateful firewall. Neither firewall tool is preinstalled on this project's
# machines (STACK.md), so as root they are installed from Debian's packages. Without root
# there is nothing to install for: the test itself needs root and says so.
set -euo pipefail

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-netns-tools: missing ${missing[*]}; the outbound-only test needs root and will fail: run as root, or apt-get install -y ${missing[*]}" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "ensure-netns-tools: missing ${missing[*]} and no apt-get: install them with your package manager" >&2
  exit 1
fi
echo "ensure-netns-tools: installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale or absent on a fresh machine; one update is cheap.
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v ip >/dev/null && command -v nft >/dev/null
