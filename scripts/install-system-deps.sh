#!/usr/bin/env bash
# Debian packages some tests use: Chromium for the browser demo test. Idempotent; does nothing
# where apt-get is missing or we are not root (those tests then skip and print why).
set -u
PACKAGES=(chromium chromium-driver)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
  echo ">> system packages not installed (${missing[*]}): no apt-get or not root; their tests will be skipped"
  exit 0
fi
echo ">> installing system packages: ${missing[*]}"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
