#!/usr/bin/env bash
# Debian's Chromium and its WebDriver for the dashboard's browser test (tests/dashboard/test_browser.py).
exec bash "$(dirname "$0")/ensure_debian.sh" chromium "chromium chromium-driver" \
    "/usr/bin/chromium /usr/bin/chromedriver" "the browser test"
