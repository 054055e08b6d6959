#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium for the real-browser test
# (tests/test_browser_e2e.py). Installs it with apt-get when missing; does nothing otherwise.
# Without root or sudo it prints how to install it, and fails only in CI (CI=true), where the
# browser test must run; elsewhere that test then skips with the same advice.
# Usage: bash scripts/ensure_chromium.sh
set -euo pipefail
CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "[chromium] $CHROMIUM is missing and installing it needs root. Fix: run" \
       "'sudo apt-get install chromium' (Debian/Ubuntu), then rerun the tests." >&2
  if [ "${CI:-}" = "true" ]; then
    exit 1
  fi
  exit 0
fi

echo "[chromium] installing Debian's chromium with apt-get"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
if [ ! -x "$CHROMIUM" ]; then
  echo "[chromium] apt-get finished but $CHROMIUM is still missing. Fix: install the" \
       "'chromium' package by hand and check that it provides $CHROMIUM." >&2
  exit 1
fi
echo "[chromium] installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
