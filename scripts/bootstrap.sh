#!/usr/bin/env bash
# Installs what `make test` and `make run` need, idempotently: uv, the locked Python deps,
# and (as root, when missing) PostgreSQL, Java and Maven from Debian's packages.
# The Kafka jars are fetched by the launcher (Maven, from Maven Central) on first `up`.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: $1 is missing; install it (Debian/Ubuntu: apt-get install -y $2)" >&2
    exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "bootstrap: installing PostgreSQL server binaries"
  apt_install "PostgreSQL server binaries" postgresql
fi
command -v java >/dev/null 2>&1 || { echo "bootstrap: installing Java"; apt_install java openjdk-17-jre-headless; }
command -v mvn >/dev/null 2>&1 || { echo "bootstrap: installing Maven"; apt_install mvn maven; }

if ! python3 -m uv --version >/dev/null 2>&1; then
  echo "bootstrap: installing uv"
  python3 -m pip install --quiet --disable-pip-version-check 'uv>=0.5,<1' \
    || python3 -m pip install --quiet --user --break-system-packages 'uv>=0.5,<1'
fi
# Bytecode compiled once here: the services start many times in `make test` (crash and
# restart tests, end to end), and where PYTHONDONTWRITEBYTECODE is set each start compiled
# its imports again (cel alone pulls in prompt_toolkit): ~1.5 s of CPU a scheduler start.
python3 -m uv sync --locked --quiet --compile-bytecode
