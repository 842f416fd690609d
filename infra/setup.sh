#!/usr/bin/env bash
# Idempotent setup of a fresh Debian 12 machine (as root) for chargemesh development and CI:
# ClickHouse server and Chromium (headless, for the report test) from Debian, a .venv in the
# repository, and chargemesh installed NON-editable with the `embedded` and `test` extras (CI
# then proves the .avsc and .sql files really ship).
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

# Debian packages, each only when missing, behind one shared apt-get update: the ClickHouse
# server, and Chromium with its WebDriver (tests/test_report_browser.py opens the HTML report in
# it headless, as its readers do).
APT_PACKAGES=()
if [ ! -x /usr/sbin/clickhouse-server ]; then
    APT_PACKAGES+=(clickhouse-server clickhouse-client)
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    APT_PACKAGES+=(chromium chromium-driver)
fi
if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update
    quiet apt-get install -y "${APT_PACKAGES[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    quiet python3 -m venv .venv
fi

# setuptools builds through build/ and packs whatever it finds there: a module moved or deleted
# since the last install would ship again (and import-linter would read it). Build from clean.
rm -rf build ./*.egg-info

# Dependencies first (pip skips what is already satisfied), then the project itself again so a
# code change lands even when the version number did not move.
quiet .venv/bin/python -m pip install --disable-pip-version-check '.[embedded,test]'
quiet .venv/bin/python -m pip install --disable-pip-version-check --force-reinstall --no-deps .
