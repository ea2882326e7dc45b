#!/usr/bin/env bash
# Rebuilds this directory from upstream quic-go (taken from the Go module proxy) plus
# patches/*.patch, in file-name order. With --check it rebuilds into a temporary directory
# and fails if anything here differs: CI runs that, so the copy is always exactly upstream
# plus the patches README.md describes.
#
# Only the packages StreamSpace builds are kept, without upstream's tests (they stay
# upstream's to run); the patches add tests of their own changes.
set -euo pipefail

VERSION=v0.65.0
PACKAGES=(
	.
	internal/ackhandler
	internal/congestion
	internal/handshake
	internal/monotime
	internal/protocol
	internal/qerr
	internal/utils
	internal/utils/linkedlist
	internal/utils/minheap
	internal/utils/ringbuffer
	internal/wire
	qlog
	qlogwriter
	qlogwriter/jsontext
	quicvarint
)
# Files of this directory that are ours, not upstream's.
OWN=(README.md sync.sh patches)

here=$(cd "$(dirname "$0")" && pwd)
check=false
[[ "${1:-}" == --check ]] && check=true

src=$(cd /tmp && GOWORK=off go mod download -json "github.com/quic-go/quic-go@$VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d "$src" ]] || { echo "sync.sh: could not download quic-go $VERSION from the module proxy" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$src/go.mod" "$src/go.sum" "$src/LICENSE" "$tmp/"
for p in "${PACKAGES[@]}"; do
	mkdir -p "$tmp/$p"
	for f in "$src/$p"/*.go; do
		[[ "$f" == *_test.go ]] || cp "$f" "$tmp/$p/"
	done
done
chmod -R u+w "$tmp"
for p in "$here"/patches/*.patch; do
	patch -s -p1 -d "$tmp" <"$p" || { echo "sync.sh: $(basename "$p") does not apply to quic-go $VERSION" >&2; exit 1; }
done

excludes=()
for o in "${OWN[@]}"; do excludes+=(-x "$o"); done
if $check; then
	if ! diff -r "${excludes[@]}" "$tmp" "$here" >&2; then
		echo "sync.sh: $here is not quic-go $VERSION plus patches/; run bash $0 to rebuild it" >&2
		exit 1
	fi
	echo "quic-go fork: upstream $VERSION plus $(ls "$here"/patches/*.patch | wc -l) patch(es), verified"
	exit 0
fi
find "$here" -mindepth 1 -maxdepth 1 $(printf -- '! -name %s ' "${OWN[@]}") -exec rm -rf {} +
cp -r "$tmp"/. "$here"/
echo "quic-go fork rebuilt: upstream $VERSION plus patches/"
