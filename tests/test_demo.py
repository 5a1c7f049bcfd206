"""`rsdml demo`: synthetic data, a real HR-S2DML run, an honest summary."""

from rsdml.demo import run_demo


def test_demo_runs_and_reports_above_three_times_chance(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", epochs=3, quiet=True)
    out = capsys.readouterr().out
    assert "synthetic" in out.lower() and "rsdml train --data" in out
    assert (tmp_path / "demo" / "run" / "eval" / "report.html").is_file()
    assert result["knn_acc"] >= 3 * result["chance"]
    assert f"{result['knn_acc']:.3f}" in out and f"{result['knn_acc_before']:.3f}" in out
