"""The command line: every --help, --version, one-line errors with the right exit code, refusal of
folders that are not runs, and the quickstart main job on the embedded digits data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bayescale
from bayescale import cli
from bayescale.cli import build_parser, main, subparsers

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(subparsers(build_parser()))
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bayescale", *args], capture_output=True,
                          text=True, timeout=120, env=env or ENV, cwd=REPO)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_every_subcommand_is_registered():
    assert COMMANDS == sorted(["quickstart", "evaluate", "predict", "report", "train", "scale",
                               "prune"])


@pytest.mark.parametrize("argv", [[]] + [[c] for c in COMMANDS], ids=lambda a: " ".join(a) or "top")
def test_help_in_process(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bayescale" + (f" {argv[0]}" if argv else ""))
    parser = subparsers(build_parser())[argv[0]] if argv else build_parser()
    for action in parser._actions:  # every option is documented on the help page
        for flag in action.option_strings:
            assert flag in out, flag


def test_help_and_version_as_python_m_bayescale():
    top = _run("--help")
    assert top.returncode == 0 and not top.stderr, top.stderr
    for cmd in COMMANDS:
        assert cmd in top.stdout
        res = _run(cmd, "--help")
        assert res.returncode == 0 and res.stdout.startswith(f"usage: bayescale {cmd}"), \
            res.stderr[-2000:]
    version = _run("--version")
    pyproject = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(),
                          re.M).group(1)
    assert version.returncode == 0 and version.stdout.strip() == f"bayescale {pyproject}"
    assert bayescale.__version__ == pyproject


@pytest.mark.parametrize("argv, code, says", [
    ([], 2, "the following arguments are required"),
    (["trian"], 2, "invalid choice"),
    (["train", "--bogus"], 2, "bayescale train: unrecognized arguments: --bogus"),
    (["train", "mnist_bnn_fc_flip", "optim.lr=abc"], 2, "expected a number"),
    (["train", "mnist_bnn_fc_flip", "optim.nosuchkey=1"], 2, "nosuchkey"),
    (["train", "no_such_config"], 2, "neither a file nor a shipped config"),
    (["evaluate"], 2, "required: RUN_OR_CHECKPOINT"),
    (["evaluate", "RUN", "--samples", "many"], 2, "expected 'auto' or an integer >= 1"),
    (["predict", "RUN", "--data", "x", "--out", "x.csv", "--samples", "0"], 2, "integer >= 1"),
    (["prune", "RUN"], 2, "give --threshold T"),
    (["prune", "RUN", "--threshold", "a,b"], 2, "--threshold takes numbers"),
    (["scale"], 2, "give a CONFIG"),
    (["predict", "RUN", "--out", "x.csv"], 2, "one of the arguments --input --data"),
    (["evaluate", "NOWHERE"], 1, "no run or checkpoint at"),
    (["report", "NOWHERE"], 1, "no run directory at"),
])
def test_user_errors_are_one_line_with_exit_code(argv, code, says, tmp_path, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert says in err and err.startswith("bayescale") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv", [
    ["report", "{d}"],
    ["report", "{d}", "--out", "{d}/r.html"],
    ["evaluate", "{d}"],
    ["evaluate", "{d}", "--out", "{d}/m.json"],
    ["predict", "{d}", "--data", "synthetic", "--out", "{d}/p.csv"],
    ["prune", "{d}", "--sweep"],
    ["prune", "{d}", "--threshold", "1", "--save"],
])
def test_commands_refuse_a_folder_that_is_not_a_run_and_write_nothing(argv, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    (tmp_path / "eval").mkdir()
    before = _files(tmp_path)
    dirs = sorted(p for p in tmp_path.rglob("*") if p.is_dir())
    assert main([a.format(d=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("not a run directory" in err or "no model.pt" in err), err
    assert _files(tmp_path) == before
    assert sorted(p for p in tmp_path.rglob("*") if p.is_dir()) == dirs


def test_report_refusal_as_python_m_bayescale(tmp_path):
    res = _run("report", str(tmp_path))
    assert res.returncode == 1 and "is not a run directory" in res.stderr
    assert res.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch, capsys):
    def bug(args):
        raise KeyError("oops")

    real = cli.build_parser

    def parser_with_bug():
        p = real()
        subparsers(p)["report"].set_defaults(func=bug)
        return p

    monkeypatch.setattr(cli, "build_parser", parser_with_bug)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert main(["report", "x"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"bayescale report: unexpected KeyError: 'oops' \(rerun with "
                        r"BAYESCALE_DEBUG=1 .*\)\n", err), err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(KeyError):
        main(["report", "x"])


def test_quickstart_trains_a_bnn_that_beats_chance(capsys):
    pytest.importorskip("sklearn")
    assert main(["quickstart", "--digits", "--epochs", "3", "--samples", "10", "--json"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    result = json.loads(out[out.index("{"):])
    assert result["test_accuracy"] > 0.7  # 10 classes: chance is 0.1
    assert result["kl"] > 0 and result["test_nll"] < 1.5
