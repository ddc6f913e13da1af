#!/bin/sh
# Debian packages some tests use (Chromium: the browser demo test; mono, Boost, nlohmann-json: the
# Unity and Unreal client harnesses); idempotent. Skips (exit 0, with a message) when apt-get is missing,
# when everything is already installed, or when not root and sudo is unavailable.
# Tests that need a missing package skip themselves and print why.
set -eu

PACKAGES="
chromium
chromium-driver
mono-mcs
mono-runtime
libboost-dev
nlohmann-json3-dev
haproxy
redis-server
"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo ">> system packages present:" $PACKAGES
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo ">> apt-get not available; not installing:$missing (the tests that need them will be skipped)"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo ">> not root and no passwordless sudo; not installing:$missing (the tests that need them will be skipped)"
    exit 0
fi
echo ">> apt-get install:$missing"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
