"""Checkpoints: checksums catch damage, rotation keeps N, load_latest falls back with a warning."""

import pickle

import pytest
import torch

from bayescale.train.checkpoint import (
    CheckpointError,
    checkpoint_files,
    load_checkpoint,
    load_latest,
    save_checkpoint,
    state_digest,
)


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3, 2), v), "b": torch.arange(3)}, "step": int(v),
            "rng": [{"cpu": torch.get_rng_state()}], "half": torch.ones(2, dtype=torch.bfloat16)}


def test_round_trip_and_digest(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(1.0))
    got = load_checkpoint(path)
    assert torch.equal(got["model"]["w"], torch.full((3, 2), 1.0)) and got["step"] == 1
    assert got["sha256"] == state_digest(got)
    other = dict(got, step=2)
    assert state_digest(other) != got["sha256"]
    flipped = {**got, "model": {**got["model"], "w": got["model"]["w"].clone()}}
    flipped["model"]["w"][0, 0] = 1.0000001
    assert state_digest(flipped) != got["sha256"]


def test_altered_content_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(1.0))
    state = torch.load(path, weights_only=True)
    state["model"]["w"][1, 1] = 5.0  # a silent change that keeps the file loadable
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_rotation_keeps_n_and_falls_back(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for v in range(1, 6):
        save_checkpoint(path, _state(float(v)), keep=3)
    files = checkpoint_files(path)
    assert [f.name for f in files] == ["checkpoint.pt", "checkpoint.1.pt", "checkpoint.2.pt"]
    assert [load_checkpoint(f)["step"] for f in files] == [5, 4, 3]
    path.write_bytes(path.read_bytes()[:100])  # truncate the newest
    with pytest.warns(UserWarning, match="damaged checkpoint, using checkpoint.1.pt"):
        used, state = load_latest(tmp_path)
    assert used.name == "checkpoint.1.pt" and state["step"] == 4
    for f in files[1:]:
        f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        load_latest(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_latest(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(path, _state(1.0), keep=0)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused_not_run(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 1, "model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert "pwned" not in capsys.readouterr().out


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path):
    from bayescale.train.engine import train

    cfg = {"model": {"name": "BNN_FC_flip"}, "data": {"name": "synthetic", "size": 256},
           "train": {"steps": 8, "batch_size": 32, "progress": False, "checkpoint_every": 2,
                     "keep_checkpoints": 3},
           "eval": {"samples": 2, "every_epochs": 0}, "output": {"dir": str(tmp_path)}}
    ref = train({**cfg, "output": {"dir": str(tmp_path), "name": "ref"}})
    run = tmp_path / "ref"
    kept = checkpoint_files(run / "checkpoint.pt")
    assert [load_checkpoint(f)["step"] for f in kept] == [8, 6, 4]
    # damage the final checkpoint; a resume must continue from step 6 and end where ref ended
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    final = torch.load(run / "model.pt", weights_only=True)
    (run / "model.pt").unlink()
    with pytest.warns(UserWarning, match="using checkpoint.1.pt"):
        res = train({**cfg, "output": {"dir": str(tmp_path), "name": "ref"}}, resume=run)
    assert res["steps"] == 8 == ref["steps"]
    again = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], again[k]) for k in final)
