"""The command line and the quickstart main job, end to end on the embedded digits data."""

from __future__ import annotations

import pytest

from bayescale.cli import main


def test_quickstart_trains_a_bnn_that_beats_chance(capsys):
    pytest.importorskip("sklearn")
    assert main(["quickstart", "--digits", "--epochs", "3", "--samples", "10", "--json"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    import json

    result = json.loads(out[out.index("{"):])
    assert result["test_accuracy"] > 0.7  # 10 classes: chance is 0.1
    assert result["kl"] > 0 and result["test_nll"] < 1.5
