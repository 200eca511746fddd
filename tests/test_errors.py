"""Input errors name their source, survive pickling (worker processes), and skips are counted."""

from __future__ import annotations

import pickle

import pytest

from cxrlab.errors import ImageReadError, InputError, LabelValueError, SkipLog


@pytest.mark.parametrize("cls", [ImageReadError, LabelValueError])
def test_errors_round_trip_through_pickle(cls):
    err = pickle.loads(pickle.dumps(cls("train.csv:12", "value 2 not in {1, 0, -1, blank}")))
    assert type(err) is cls
    assert (err.source, err.problem) == ("train.csv:12", "value 2 not in {1, 0, -1, blank}")
    assert str(err) == "train.csv:12: value 2 not in {1, 0, -1, blank}"


def test_skip_log_raises_or_counts():
    with pytest.raises(ImageReadError):
        SkipLog("raise").handle(ImageReadError("a.png", "truncated"))
    log = SkipLog("skip")
    for i in range(12):
        log.handle(ImageReadError(f"{i}.png", "truncated"))
    assert log.count == 12
    summary = log.summary(limit=3)
    assert summary.startswith("skipped 12 item(s):") and "0.png: truncated" in summary
    assert "and 9 more" in summary
    with pytest.raises(ValueError):
        SkipLog("ignore")
    assert isinstance(log.skipped[0], InputError)
