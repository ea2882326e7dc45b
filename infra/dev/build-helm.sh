#!/usr/bin/env bash
# build-helm.sh builds (once) and caches the helm CLI from the Go module proxy, for the
# chart tests (e2e/charts) and for anyone who wants to install the charts from a clone:
#
#   infra/dev/build-helm.sh                 # build if needed, print the helm binary's path last
#   STREAMSPACE_HELM_CACHE=/x infra/dev/build-helm.sh
#   infra/dev/build-helm.sh --force         # rebuild even if present
#
# Output (never inside the repository):
#   ${STREAMSPACE_HELM_CACHE:-$HOME/.cache/streamspace/helm/v4.3.1}/bin/helm
#
# The binary comes from `GOWORK=off go install helm.sh/helm/v4/cmd/helm@v4.3.1`: the only
# network this project reaches is the Go module proxy, so there is no release tarball to
# fetch. A cold build takes about two minutes on 2 cores; later runs only check that the
# binary is there and answers `helm version`. Safe to run concurrently: an exclusive flock
# on $CACHE/.lock serialises builders, and the binary is renamed into place atomically.
set -euo pipefail

HELM_VERSION=v4.3.1

cache="${STREAMSPACE_HELM_CACHE:-${HOME:-/tmp}/.cache/streamspace/helm/$HELM_VERSION}"
helm="$cache/bin/helm"
force=0
[[ "${1:-}" == "--force" ]] && force=1

log() { printf 'build-helm.sh: %s\n' "$*" >&2; }

# The binary is reused only if it runs and is the version this script pins.
ok() { [[ -x "$helm" && "$("$helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; }

if [[ $force == 0 ]] && ok; then
	echo "$helm"
	exit 0
fi

mkdir -p "$cache/bin"
exec 9>"$cache/.lock"
if ! flock -n 9; then
	log "another build holds $cache/.lock; waiting"
	flock 9
fi
# Someone else may have finished the build while we waited.
if [[ $force == 0 ]] && ok; then
	echo "$helm"
	exit 0
fi

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
tmp="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

log "building helm $HELM_VERSION from the Go module proxy into $cache/bin"
log "a cold build takes a couple of minutes; later runs reuse the cache"
# GOWORK=off: build helm's own module graph, never the repository's go.work. Running
# from $tmp keeps any go.mod of the caller's working directory out of the way too.
(cd "$tmp" && GOWORK=off CGO_ENABLED=0 GOBIN="$tmp" \
	go install -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
	"helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
[[ -x "$tmp/helm" ]] || { log "go install produced no helm binary"; exit 1; }
got="$("$tmp/helm" version --template '{{.Version}}')" || { log "the built helm does not run"; exit 1; }
[[ "$got" == "$HELM_VERSION" ]] || { log "the built helm says it is $got, not $HELM_VERSION"; exit 1; }

mv -f "$tmp/helm" "$helm"
log "done in $((SECONDS - start))s"
echo "$helm"
