# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cxrlab-installed

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Pinned requirements first (torch==2.14.1, torchvision==0.29.1 and the rest of
# the tested set), then the project itself without re-resolving dependencies.
$(STAMP): $(PY) requirements.txt pyproject.toml
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cxrlab demo --out runs/demo
	@echo
	@echo "Open the dashboard on the demo's runs:  $(VENV)/bin/cxrlab dashboard --runs runs/demo"

# The dashboard's browser test needs Debian's chromium + chromium-driver, the DICOM node tests
# dcmtk, dicom3tools and orthanc. Both scripts call scripts/ensure_debian.sh, which installs the
# packages when missing and possible, and otherwise says why those tests will be skipped.
test: $(STAMP)
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_dicom_tools.sh
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
