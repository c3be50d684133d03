"""The README's demo runs end to end, prints what it claims, and writes its plot."""

import sys

from functorch_optim import demo


def table(out: str, columns: int) -> dict[str, list[str]]:
    """The rows of the printed table with ``columns`` columns, by optimizer."""
    return {
        cells[0]: cells[1:]
        for cells in (
            [c.strip() for c in line.split("|")]
            for line in out.splitlines()
            if line.count("|") == columns - 1
        )
        if cells[0] != "optimizer"
    }


def test_demo_short_run(tmp_path, capsys):
    plot = tmp_path / "loss.png"
    argv = ["--optimizer", "sgd", "adam", "--steps", "30", "--plot", str(plot)]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    float64, float32 = table(out, 2), table(out, 8)
    assert set(float64) == set(float32) == {"sgd", "adam"}
    for name in ("sgd", "adam"):
        # float64, step by step: the largest parameter difference over all steps
        assert float(float64[name][0]) < 1e-12
        first, last, accuracy, torch_last, torch_accuracy, gap, _ = float32[name]
        assert float(last) < float(first)  # it trains
        assert abs(float(torch_last) - float(last)) <= float(gap) + 1e-4
        assert float(gap) < 1e-3  # 30 float32 steps stay close to torch's
    assert demo.FLOAT32_DRIFT in out
    assert plot.stat().st_size > 1000


def test_demo_missing_extra_names_it(tmp_path, monkeypatch, capsys):
    for module in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it fails
    argv = ["--steps", "2", "--no-torch", "--plot", str(tmp_path / "loss.png")]
    assert demo.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.endswith('pip install "functorch_optim[demo]"')


def test_demo_without_matplotlib_still_trains(tmp_path, monkeypatch, capsys):
    for module in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, module, None)
    plot = tmp_path / "loss.png"
    argv = ["--optimizer", "sgd", "--steps", "2", "--no-torch", "--plot", str(plot)]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "no plot: the plot needs matplotlib" in out
    assert 'pip install "functorch_optim[demo]"' in out
    assert "sgd" in table(out, 4) and not plot.exists()


def test_demo_help(capsys):
    try:
        demo.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "--optimizer" in capsys.readouterr().out
