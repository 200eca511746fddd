"""The service's upload path under the input fuzz corpus (issue 13), and its decode workers.

A seeded sample of :mod:`cxrlab.data.fuzzing` (every mutation class that is a file) is
uploaded to ``POST /v1/studies`` and the DICOM ones also to ``POST /dicomweb/studies``,
through an app whose uploads are decoded in a child process (:mod:`cxrlab.serve.decode`):
a malformed file gets 422 with the cxrlab problem (the same text ``read_image`` gives),
a valid one 200, never a 5xx. Then decode functions that kill their own process, hang or
allocate without bound are injected as the pool's decode hook: the request gets a 422
naming what happened and the next request is answered by a fresh child.
"""

from __future__ import annotations

import re
import textwrap

import pytest
from fastapi.testclient import TestClient

from cxrlab.data.fuzzing import CLASSES, generate_cases
from cxrlab.errors import InputError
from cxrlab.io import read_image
from cxrlab.serve.app import create_app
from cxrlab.serve.decode import DecodePool
from cxrlab.serve.settings import ServeSettings

from .conftest import AUTH, TOKEN

#: pydicom warns about the invalid values the mutations write on purpose
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEED = 1313
#: Three cases of each of the 26 file classes (the special files, FIFOs and devices,
#: cannot be uploaded).
CASES = 3 * len(CLASSES)
MAX_PIXELS = 2_000_000
PREFIX = "not a readable image: "
#: A decode hook for the pool's children: the first bytes of the file say how to fail.
#: It is written to a folder on ``sys.path`` because the children import it by name.
HOOK = textwrap.dedent('''
    import os, signal, time
    from cxrlab.serve.decode import decode_file

    def decode_or_die(path, max_pixels):
        head = path.read_bytes()[:8]
        if head == b"ABORT!!!":
            os.abort()
        if head == b"SIGKILL!":
            os.kill(os.getpid(), signal.SIGKILL)
        if head == b"SLEEP!!!":
            time.sleep(600)
        if head == b"ALLOC!!!":
            return bytearray(1 << 30)
        return decode_file(path, max_pixels)
''')


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, serve_checkpoint, model_set):
    root = tmp_path_factory.mktemp("fuzz_uploads")
    settings = ServeSettings(classifier=serve_checkpoint, db=root / "db.sqlite", api_token=TOKEN,
                             uid_salt=b"u" * 32, max_pixels=MAX_PIXELS, decode_workers=1,
                             decode_memory_mb=1024)
    app = create_app(settings, models=model_set)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def uploads(fuzz_client, tmp_path_factory):
    """Each case, the service's answer and what ``read_image`` says of the same bytes."""
    folder = tmp_path_factory.mktemp("fuzz_files")
    cases = [c for c in generate_cases(CASES, seed=SEED, max_pixels=MAX_PIXELS)
             if c.special is None]
    answers = []
    for case in cases:
        path = folder / f"{case.case_id}.bin"
        path.write_bytes(case.data)
        response = fuzz_client.post("/v1/studies", files={"file": (path.name, case.data)}, headers=AUTH)
        try:
            read_image(path, max_pixels=MAX_PIXELS)
            direct = None
        except InputError as err:
            direct = err.problem
        answers.append((case, response, direct))
    return answers


def test_sample_covers_every_file_class(uploads):
    families = {case.family for case, _, _ in uploads}
    assert families == set(CLASSES) - {"special-file"}
    assert sum(case.must_fail for case, _, _ in uploads) > len(uploads) // 2


def test_malformed_uploads_get_422_naming_the_problem_and_never_500(uploads):
    wrong = []
    for case, response, direct in uploads:
        detail = response.json().get("detail", "") if response.status_code == 422 else ""
        expected = 422 if case.must_fail else 200 if case.must_read else None
        if response.status_code not in (200, 422) or (expected and response.status_code != expected):
            wrong.append(f"{case.case_id}: {response.status_code} {response.text[:300]}")
        elif response.status_code == 422 and (not detail.startswith(PREFIX) or not detail[len(PREFIX):].strip()):
            wrong.append(f"{case.case_id}: 422 without a cxrlab problem: {detail!r}")
        elif response.status_code == 422 and direct is not None \
                and _unnamed(detail, "upload-") != PREFIX + _unnamed(direct, case.case_id):
            wrong.append(f"{case.case_id}: {detail!r} is not the reader's problem {direct!r}")
    assert not wrong, "\n".join(wrong)
    statuses = {response.status_code for _, response, _ in uploads}
    assert statuses == {200, 422}


def test_stow_rs_lists_malformed_dicoms_as_failed_never_500(fuzz_client, uploads):
    dicoms = [(case, response) for case, response, _ in uploads if case.family.startswith("dicom-")]
    boundary = "cxrlab-fuzz-boundary"
    for case, response in dicoms:
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + case.data
                + f"\r\n--{boundary}--\r\n".encode())
        stow = fuzz_client.post("/dicomweb/studies", content=body, headers={
            **AUTH, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert stow.status_code in (200, 409), (case.case_id, stow.status_code, stow.text[:300])
        if response.status_code == 422:  # refused as an upload: listed as failed
            assert stow.status_code == 409, (case.case_id, stow.text[:300])


def _unnamed(text: str, name_start: str) -> str:
    """``text`` with the file's name (the service's spool name, or the case's) left out."""
    return re.sub(re.escape(name_start) + r"[\w.-]*", "<file>", text)


@pytest.fixture(scope="module")
def crash_pool(tmp_path_factory):
    """One child with the failing decode hook (replaced after each death), for the module."""
    folder = tmp_path_factory.mktemp("hook")
    (folder / "cxrlab_decode_hook.py").write_text(HOOK)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))  # the spawned children copy sys.path
        import cxrlab_decode_hook

        with DecodePool(1, max_pixels=MAX_PIXELS, memory_mb=256, timeout_s=2.0,
                        decode=cxrlab_decode_hook.decode_or_die) as pool:
            yield pool


def test_a_decoder_that_kills_its_process_costs_a_422_not_the_service(fuzz_client, crash_pool, phantom_images):
    service = fuzz_client.app.state.service
    own, service.decoder = service.decoder, crash_pool
    valid = phantom_images[0].read_bytes()
    try:
        for head, problem in [(b"ABORT!!!", "the decoder process was killed by SIGABRT while reading this file"),
                              (b"SIGKILL!", "the decoder process was killed by SIGKILL while reading this file"),
                              (b"SLEEP!!!", "decoding took longer than 2 s"),
                              (b"ALLOC!!!", "decoding needs more memory than a decode worker may use (256 MiB)")]:
            refused = fuzz_client.post("/v1/studies", files={"file": ("x.dcm", head + bytes(64))}, headers=AUTH)
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"].startswith(PREFIX + problem)
            answered = fuzz_client.post("/v1/studies", files={"file": ("ok.png", valid)}, headers=AUTH)
            assert answered.status_code == 200, answered.text
    finally:
        service.decoder = own
    assert fuzz_client.get("/healthz").status_code == 200


def test_pool_names_the_file_and_decodes_in_process_when_told(crash_pool, phantom_images, tmp_path):
    bad = tmp_path / "killer.png"
    bad.write_bytes(b"SIGKILL!")
    with pytest.raises(InputError, match=r"killer.png: the decoder process was killed by SIGKILL"):
        crash_pool.read(bad)
    assert crash_pool.read(phantom_images[0]).pixels.shape == (96, 96)
    with DecodePool(0) as in_process:
        assert in_process.read(phantom_images[0]).pixels.shape == (96, 96)
        with pytest.raises(InputError, match="killer.png: not a DICOM, PNG or JPEG file"):
            in_process.read(bad)
