#!/usr/bin/env bash
# Make sure the Debian programs a group of tests needs are installed.
#
#   bash scripts/ensure_debian.sh NAME "PACKAGES" "PROGRAMS" "WHAT SKIPS"
#
# NAME labels the messages; PACKAGES are installed with apt-get; PROGRAMS are the absolute paths
# that must exist afterwards; WHAT SKIPS says which tests skip when they are missing.
# Idempotent: does nothing when every program is present. Installs only when one is missing and
# we are root, on a system with apt-get; otherwise it says why (those tests then skip with that
# reason). Never starts a system service. Always exits 0 so `make test` goes on.
# APT_EXTRA (environment) adds apt-get install options, e.g. --no-install-recommends.
set -u

if [ "$#" -ne 4 ]; then
    echo "usage: ensure_debian.sh NAME \"PACKAGES\" \"PROGRAMS\" \"WHAT SKIPS\"" >&2
    exit 0
fi
NAME=$1 PACKAGES=$2 PROGRAMS=$3 SKIPS=$4

missing() {
    for program in $PROGRAMS; do
        [ -x "$program" ] || return 0
    done
    return 1
}
say() { echo "ensure_debian[$NAME]: $*"; }

if ! missing; then
    say "$PACKAGES present"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    say "$PACKAGES missing and not root; install them with 'sudo apt-get install -y $PACKAGES' ($SKIPS will be skipped)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "$PACKAGES missing and apt-get is not available (not Debian/Ubuntu); $SKIPS will be skipped"
    exit 0
fi
say "installing $PACKAGES with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null 2>&1; then
    say "apt-get update failed (no access to the package mirror?); $SKIPS will be skipped"
    exit 0
fi
# shellcheck disable=SC2086  # PACKAGES is a word list on purpose
if ! apt-get install -y -qq ${APT_EXTRA:-} $PACKAGES >/dev/null 2>&1; then
    say "apt-get install $PACKAGES failed; $SKIPS will be skipped"
    exit 0
fi
if missing; then
    say "apt-get finished but one of $PROGRAMS is still missing"
else
    say "installed $PACKAGES"
fi
exit 0
