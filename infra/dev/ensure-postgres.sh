#!/usr/bin/env bash
# Makes sure tests can reach PostgreSQL: the machine's cluster on 127.0.0.1:5432 if there
# is one (started if it is down), else the server binaries for pgtest's private cluster
# (installed from Debian's packages when we are root and they are missing).
set -euo pipefail

if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  exit 0
fi
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q .; then
  read -r ver name _ < <(pg_lsclusters -h | head -1)
  echo "ensure-postgres: starting cluster $ver/$name" >&2
  pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start || true
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 0.2; done
fi
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then
  echo "ensure-postgres: no server on 127.0.0.1:5432; tests will start a private cluster" >&2
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "ensure-postgres: installing PostgreSQL from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  exit 0
fi
echo "ensure-postgres: no PostgreSQL found. Install it (apt-get install postgresql) or set STREAMSPACE_TEST_DATABASE_URL." >&2
exit 1
