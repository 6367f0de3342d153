"""The uncertainty study as one HTML page (``bayescale report --study FILE.json``) and the shift
figure it embeds (``bayescale.uncertainty.plots.plot_shift_curves``)."""

from __future__ import annotations

import json
import re

import pytest

from bayescale.cli import main
from bayescale.uncertainty import plots
from bayescale.uncertainty.study_page import study_report_path, write_study_report

SHIFTS = {"rotation": [0, 90], "noise": [0.1, 0.3]}


def _method(acc: float, ece: float, **extra: object) -> dict:
    per_shift = [{"shift": kind, "level": level, "accuracy": acc - 0.1 * i, "nll": 0.1 + i,
                  "ece": ece + 0.05 * i}
                 for kind, levels in SHIFTS.items() for i, level in enumerate(levels)]
    return {"accuracy": acc, "nll": 0.05, "brier": 0.02, "ece": ece, "aurc": 0.0006,
            "ood_auroc": 0.95, "shift_ece": 0.4, "train_s": 811.3, "infer_s": 2.35,
            "per_shift": per_shift, "seeds": [0], "mc_samples": 1, **extra}


def _study() -> dict:
    return {
        "benchmark": "uncertainty_study_mnist",
        "provenance": {"commit": "abc1234def", "device": "Test CPU", "cpu_count": 2,
                       "python": "3.11.7", "torch": "2.13.0+cpu",
                       "config": {"epochs": 3, "dataset": "mnist",
                                  "shifts": [[k, v] for k, v in SHIFTS.items()],
                                  "command": "python benchmarks/uncertainty_study.py mnist"}},
        "methods": {
            "deterministic": _method(0.9881, 0.0076, ood_auroc=None),
            "bnn": _method(0.9875, 0.0057, seeds=[0, 1], mc_samples=20,
                           per_seed={"accuracy": [0.9870, 0.9880]}),
            "ivon": _method(0.9869, 0.0037, mc_samples=20)},
        "fc": {"methods": {"deterministic": _method(0.9743, 0.0119),
                           "bnn": _method(0.9778, 0.0116)}},
        "targets": {"nll <= twin": True, "shift_ece <= 0.7 x twin": False},
    }


def _write(tmp_path, study, name="uncertainty_study_mnist.json"):
    path = tmp_path / name
    path.write_text(json.dumps(study))
    return path


def test_the_page_has_methods_numbers_targets_and_the_figure_and_never_overwrites(tmp_path):
    pytest.importorskip("matplotlib")
    path = _write(tmp_path, _study())
    out = write_study_report(path)
    assert out == tmp_path / "uncertainty_study_mnist.html" and out.is_file()
    page = out.read_text()
    for name in ("deterministic", "bnn", "ivon"):
        assert f"<td>{name}</td>" in page
    for acc in ("98.81", "98.75 ± 0.07", "98.69", "97.43", "97.78"):  # accuracy in %
        assert f"<td>{acc}</td>" in page, acc
    assert "<h2>FC section</h2>" in page
    assert "<td>nll &lt;= twin</td><td>met</td>" in page
    assert "<td>shift_ece &lt;= 0.7 x twin</td><td>not met</td>" in page
    assert "abc1234def" in page and "Test CPU" in page and "uncertainty_study.py mnist" in page
    assert "<td>epochs</td><td>3</td>" in page and "<td>data set</td><td>mnist</td>" in page
    assert page.count("data:image/png;base64,") == 2  # the main and the FC shift figures
    assert "<script" not in page and "http" not in page  # self-contained
    second = write_study_report(path)
    assert second == tmp_path / "uncertainty_study_mnist-2.html"
    assert out.read_text() == page  # the first page is untouched
    assert study_report_path(path) == tmp_path / "uncertainty_study_mnist-3.html"
    with pytest.raises(FileExistsError):
        write_study_report(path, out)


def test_the_ood_column_is_left_out_when_no_method_has_it(tmp_path):
    pytest.importorskip("matplotlib")
    study = _study()
    del study["fc"]
    for m in study["methods"].values():
        m.pop("ood_auroc", None)
    page = write_study_report(_write(tmp_path, study)).read_text()
    assert "<th>OOD AUROC (score)</th>" not in page and "FC section" not in page
    assert "<th>shift ECE</th>" in page


def test_cli_report_study(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = _write(tmp_path, _study())
    out = tmp_path / "page.html"
    assert main(["report", "--study", str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert "data:image/png;base64," in out.read_text()
    assert main(["report", "--study", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / (path.stem + '.html')}"


@pytest.mark.parametrize("argv, says", [
    (["report"], "one of the arguments RUN --study is required"),
    (["report", "somerun", "--study", "x.json"], "not allowed with"),
])
def test_cli_report_needs_exactly_one_of_run_and_study(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.startswith("bayescale report:") and err.count("\n") == 1, err


def _no_per_shift(study):
    del study["methods"]["bnn"]["per_shift"]
    return json.dumps(study)


@pytest.mark.parametrize("content, says", [
    (None, "no such file"),
    ("{not json", "is not valid JSON"),
    ('[1, 2]', 'has no "methods" mapping'),
    (json.dumps({"benchmark": "x", "methods": [1]}), 'has no "methods" mapping'),
    (json.dumps({"methods": {}}), "not a non-empty mapping"),
    (_no_per_shift(_study()), "method 'bnn' in \"methods\" has no per_shift"),
])
def test_bad_inputs_are_refused_with_the_problem_named(content, says, tmp_path, capsys):
    path = tmp_path / "study.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(says)) as err:
        write_study_report(path)
    assert str(path) in str(err.value) and "uncertainty_study" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else
                                                          ["study.json"])  # nothing written
    assert main(["report", "--study", str(path)]) == 1  # the CLI: one line, exit code 1
    err_line = capsys.readouterr().err
    assert says in err_line and err_line.count("\n") == 1


def test_shift_curves_draw_one_line_per_method_per_axis(tmp_path):
    pytest.importorskip("matplotlib")
    methods = _study()["methods"]
    fig = plots._shift_figure(methods, "t")
    axes = fig.axes
    assert len(axes) == 4  # accuracy and ECE rows x rotation and noise columns
    for ax in axes:
        assert [line.get_label() for line in ax.lines] == list(methods)
        assert [len(line.get_xdata()) for line in ax.lines] == [2, 2, 2]
    # colours by the fixed study order, whichever methods are present
    assert [line.get_color() for line in axes[0].lines] == ["C0", "C4", "C6"]
    assert [ax.get_xlabel() for ax in axes] == ["rotation (degrees)", "noise sd"] * 2
    accuracy = {line.get_label(): list(line.get_ydata()) for line in axes[0].lines}
    assert accuracy["bnn"] == pytest.approx([0.9875, 0.8875])
    ece = {line.get_label(): list(line.get_ydata()) for line in axes[2].lines}
    assert ece["ivon"] == pytest.approx([0.0037, 0.0537])
    out = plots.plot_shift_curves(methods, tmp_path / "f" / "shift.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no per_shift"):
        plots.plot_shift_curves({"bnn": {"accuracy": 0.9}}, tmp_path / "x.png")
