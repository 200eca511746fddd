#!/usr/bin/env bash
# Make sure the DICOM software the service's tests talk to is installed: DCMTK (echoscu,
# storescu, storescp, dsrdump), dicom3tools (dciodvfy) and Orthanc, all from Debian.
# Idempotent: does nothing when every program exists. Installs with apt-get only when one is
# missing and we are root; otherwise says why (those tests then skip with that reason).
# Always exits 0 so `make test` goes on.
set -u

PROGRAMS="echoscu storescu storescp dsrdump dciodvfy Orthanc"
missing() { for p in $PROGRAMS; do command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || echo "$p"; done; }

if [ -z "$(missing)" ]; then
    echo "ensure_dicom_tools: DCMTK, dicom3tools and Orthanc present"
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_dicom_tools: missing $(missing | tr '\n' ' ')and cannot apt-get install them" \
         "(not root or not Debian); install dcmtk dicom3tools orthanc (those tests will be skipped)"
    exit 0
fi
echo "ensure_dicom_tools: installing dcmtk dicom3tools orthanc with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null 2>&1 \
   || ! apt-get install -y -qq --no-install-recommends dcmtk dicom3tools orthanc >/dev/null 2>&1; then
    echo "ensure_dicom_tools: apt-get failed (no access to the package mirror?); those tests will be skipped"
    exit 0
fi
# Debian's package starts a system Orthanc; the tests start their own on a free port.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
service orthanc stop >/dev/null 2>&1 || true
echo "ensure_dicom_tools: still missing: $(missing | tr '\n' ' ')"
exit 0
