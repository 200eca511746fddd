#!/usr/bin/env bash
# Make sure Debian's DCMTK (echoscu, storescu, storescp, dsrdump), dicom3tools (dciodvfy) and
# Orthanc are installed for the DICOM node's tests (tests/serve/test_dimse.py, test_orthanc.py, ...).
# Idempotent: does nothing when they are present. Installs them with apt-get only when one is
# missing and we are root; otherwise says why (those tests then skip with that reason). Never
# starts Orthanc as a system service: the tests run their own on a loopback port. Always exits 0.
set -u

TOOLS="/usr/bin/storescu /usr/bin/storescp /usr/bin/echoscu /usr/bin/dsrdump /usr/bin/dciodvfy /usr/sbin/Orthanc"

missing() {
    for tool in $TOOLS; do
        [ -x "$tool" ] || return 0
    done
    return 1
}

if ! missing; then
    echo "ensure_dicom_tools: dcmtk, dicom3tools and orthanc present"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_dicom_tools: dcmtk/dicom3tools/orthanc missing and not root; install them with" \
         "'sudo apt-get install -y dcmtk dicom3tools orthanc' (the DICOM tests will be skipped)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_dicom_tools: dcmtk/dicom3tools/orthanc missing and apt-get is not available" \
         "(not Debian/Ubuntu); the DICOM tests will be skipped"
    exit 0
fi
echo "ensure_dicom_tools: installing dcmtk, dicom3tools and orthanc with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null 2>&1; then
    echo "ensure_dicom_tools: apt-get update failed (no access to the package mirror?); the DICOM tests will be skipped"
    exit 0
fi
if ! apt-get install -y -qq --no-install-recommends dcmtk dicom3tools orthanc >/dev/null 2>&1; then
    echo "ensure_dicom_tools: apt-get install dcmtk dicom3tools orthanc failed; the DICOM tests will be skipped"
    exit 0
fi
if missing; then
    echo "ensure_dicom_tools: apt-get finished but one of $TOOLS is still missing"
else
    echo "ensure_dicom_tools: installed $(/usr/bin/storescu --version 2>/dev/null | head -1)"
fi
exit 0
