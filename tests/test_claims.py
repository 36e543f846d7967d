"""`labkit.claim`: shown with its mark and figures, kept in the notebook as plain data, refused when malformed."""

import math

import numpy as np
import pytest
import torch

from labkit.claims import MIME, claim


class FakeShell:
    """Enough of IPython for `display(..., raw=True)` to be captured."""


@pytest.fixture
def shown(monkeypatch):
    outputs = []
    monkeypatch.setattr("IPython.get_ipython", lambda: FakeShell())
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: outputs.append(obj))
    return outputs


def test_a_claim_is_displayed_with_its_mark_and_kept_as_plain_data(shown):
    assert claim("A is faster than B", 2.0 > 1.3, evidence={"ratio": np.float64(2.0), "n": np.int64(40), "why": None}) is True
    assert claim("B is faster than A", 0.5 > 1, evidence={"ratio": math.inf}) is False
    first, second = (o[MIME] for o in shown)
    assert first == {"statement": "A is faster than B", "holds": True, "applies": "any", "checked": "here",
                     "source": "", "evidence": {"ratio": 2.0, "n": 40, "why": "None"}}
    assert type(first["evidence"]["ratio"]) is float and type(first["evidence"]["n"]) is int
    assert second["evidence"]["ratio"] == "inf"  # JSON has no infinity
    assert shown[0]["text/plain"].startswith("✓ A is faster than B") and "ratio = 2" in shown[0]["text/plain"]
    assert shown[1]["text/plain"].startswith("✗ B is faster than A")


def test_a_gpu_claim_shown_from_the_record_says_where_it_was_recorded(shown):
    claim("graphs cut batch-1 latency 3x", True, applies="gpu", recorded="NVIDIA H200, 2026-11-27, 2 runs: a, b")
    (out,) = shown
    assert out[MIME]["checked"] == "recorded" and out[MIME]["applies"] == "gpu"
    assert "recorded on NVIDIA H200" in out["text/plain"]


def test_holds_accepts_numpy_and_tensor_truth_values(shown):
    assert claim("numpy", np.bool_(True)) is True
    assert claim("tensor", torch.tensor(False)) is False
    assert [o[MIME]["holds"] for o in shown] == [True, False]


@pytest.mark.parametrize("kwargs, error", [
    ({"statement": "", "holds": True}, ValueError),
    ({"statement": "x", "holds": True, "applies": "tpu"}, ValueError),
    ({"statement": "x", "holds": torch.tensor([True, False])}, TypeError),
])
def test_malformed_claims_are_refused(kwargs, error):
    with pytest.raises(error):
        claim(**kwargs)


def test_outside_ipython_a_claim_only_returns(monkeypatch):
    monkeypatch.setattr("IPython.get_ipython", lambda: None)
    assert claim("plain script", True) is True
