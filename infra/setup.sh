#!/usr/bin/env bash
# Idempotent setup of a fresh Debian 12 machine (as root) for chargemesh development and CI:
# ClickHouse server from Debian, a .venv in the repository, and chargemesh installed NON-editable
# with the `embedded` and `test` extras (CI then proves the .avsc and .sql files really ship).
# Quiet when all is well; on failure it prints the failing step's full output and exits non-zero.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG="$(mktemp -t chargemesh-setup.XXXXXX)"
trap 'rm -f "$LOG"' EXIT

quiet() {
    # Run "$@" with output captured; show it all only if the step fails.
    if ! "$@" >"$LOG" 2>&1; then
        echo "setup.sh: FAILED: $*" >&2
        cat "$LOG" >&2
        exit 1
    fi
}

if [ ! -x /usr/sbin/clickhouse-server ]; then
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update
    quiet apt-get install -y clickhouse-server clickhouse-client
fi

if [ ! -x .venv/bin/python ]; then
    quiet python3 -m venv .venv
fi

# Dependencies first (pip skips what is already satisfied), then the project itself again so a
# code change lands even when the version number did not move.
quiet .venv/bin/python -m pip install --disable-pip-version-check '.[embedded,test]'
quiet .venv/bin/python -m pip install --disable-pip-version-check --force-reinstall --no-deps .
