#!/usr/bin/env bash
# Debian's DCMTK (echoscu, storescu, storescp, dsrdump), dicom3tools (dciodvfy) and Orthanc for the
# DICOM node's tests (tests/serve/test_dimse.py, test_dicom_node.py, test_orthanc.py). The tests run
# their own Orthanc on a loopback port; the package's system service is never started by us.
APT_EXTRA=--no-install-recommends exec bash "$(dirname "$0")/ensure_debian.sh" dicom-tools \
    "dcmtk dicom3tools orthanc" \
    "/usr/bin/storescu /usr/bin/storescp /usr/bin/echoscu /usr/bin/dsrdump /usr/bin/dciodvfy /usr/sbin/Orthanc" \
    "the DICOM node tests"
