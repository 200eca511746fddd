#!/usr/bin/env bash
# Make sure Debian's Chromium and its WebDriver are installed for the dashboard's browser test.
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver exist. Installs them
# with apt-get only when one is missing and we are root; otherwise says why it cannot (the
# browser test then skips with that reason). Always exits 0 so `make test` goes on.
set -u

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; then
    echo "ensure_chromium: $CHROMIUM and $DRIVER present"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_chromium: chromium/chromium-driver missing and not root; install them with" \
         "'sudo apt-get install -y chromium chromium-driver' (the browser test will be skipped)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium/chromium-driver missing and apt-get is not available" \
         "(not Debian/Ubuntu); the browser test will be skipped"
    exit 0
fi
echo "ensure_chromium: installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get update failed (no access to the package mirror?); the browser test will be skipped"
    exit 0
fi
if ! apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get install chromium chromium-driver failed; the browser test will be skipped"
    exit 0
fi
if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; then
    echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null | head -1)"
else
    echo "ensure_chromium: apt-get finished but $CHROMIUM or $DRIVER is still missing"
fi
exit 0
