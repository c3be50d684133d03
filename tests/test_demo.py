"""The README's demo runs end to end, agrees with torch, and writes its plot."""

from functorch_optim import demo


def test_demo_short_run(tmp_path, capsys):
    plot = tmp_path / "loss.png"
    assert (
        demo.main(["--optimizer", "sgd", "adam", "--steps", "30", "--plot", str(plot)])
        == 0
    )
    out = capsys.readouterr().out
    rows = {
        line.split("|")[0].strip(): line.split("|")
        for line in out.splitlines()
        if line.count("|") == 4
    }
    for name in ("sgd", "adam"):
        first, last, gap = (
            float(rows[name][1]),
            float(rows[name][2]),
            float(rows[name][4]),
        )
        assert last < first  # it trains
        assert gap < 1e-4  # and torch's optimizer, fed the same batches, agrees
    assert plot.stat().st_size > 1000


def test_demo_help(capsys):
    try:
        demo.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "--optimizer" in capsys.readouterr().out
