"""The shared run-directory life cycle: claim, status.json running/finished/failed."""

from __future__ import annotations

import json

import pytest

from cxrlab.errors import ConfigError
from cxrlab.runs.rundir import claim_run_directory, read_status, run_status


def test_claim_refuses_a_used_directory_unless_resumed_or_overwritten(tmp_path):
    run = claim_run_directory(tmp_path / "runs" / "a")
    assert run.is_dir() and read_status(run) == {}
    (run / "best.pt").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="--resume to continue"):
        claim_run_directory(run, hint="pass --resume to continue it")
    assert claim_run_directory(run, resume=True) == run and (run / "best.pt").is_file()
    assert claim_run_directory(run, overwrite=True) == run and not any(run.iterdir())
    assert claim_run_directory(run) == run                      # an empty directory is free


def test_status_records_finish_and_failure(tmp_path):
    with run_status(tmp_path) as status:
        assert read_status(tmp_path)["state"] == "running"
        status.set("evaluating")
        assert read_status(tmp_path)["state"] == "evaluating"
        status.finished()
    done = json.loads((tmp_path / "status.json").read_text())
    assert done["state"] == "finished" and done["seconds"] >= 0

    with pytest.raises(KeyboardInterrupt):
        with run_status(tmp_path):
            raise KeyboardInterrupt                               # a kill is recorded too
    failed = read_status(tmp_path)
    assert failed["state"] == "failed" and failed["error"].startswith("KeyboardInterrupt")
    assert not list(tmp_path.glob("*.tmp*"))                       # written atomically


def test_run_json_names_the_kind_and_format(tmp_path):
    from cxrlab.runs.rundir import RUN_FORMAT_VERSION, RunDir, read_run_json

    run = claim_run_directory(tmp_path / "r", kind="segmentation")
    declared = read_run_json(run)
    assert declared["kind"] == "segmentation" and declared["format"] == RUN_FORMAT_VERSION
    assert RunDir(run).read_run_json() == declared
    assert read_run_json(tmp_path) == {}                               # older runs have none
    with pytest.raises(ConfigError, match="unknown run kind"):
        claim_run_directory(tmp_path / "s", kind="segmentaton")


def test_run_files_follow_the_umask_and_private_files_stay_private(tmp_path):
    import os
    import stat

    from cxrlab.io import write_bytes_atomic
    from cxrlab.utils import _UMASK, atomic_write_json

    public = atomic_write_json(tmp_path / "status.json", {"state": "running"})
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o666 & ~_UMASK
    assert stat.S_IMODE(os.stat(public).st_mode) & 0o044 == 0o044 & ~_UMASK   # group/other can read (umask 022)
    write_bytes_atomic(tmp_path / "image.dcm", b"DICM", private=True)
    assert stat.S_IMODE(os.stat(tmp_path / "image.dcm").st_mode) == 0o600
