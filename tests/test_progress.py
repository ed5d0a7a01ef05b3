"""Long runs show a progress bar on a terminal; it stays quiet otherwise or with --quiet."""
import io

from harness import cli
from tests.helpers import small


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    cfg = small("local_sgd")
    monkeypatch.setattr(cli.sys, "stderr", io.StringIO())
    assert cli._progress(cfg, "run", quiet=False) is None  # not a terminal
    tty = _TTY()
    monkeypatch.setattr(cli.sys, "stderr", tty)
    assert cli._progress(cfg, "run", quiet=True) is None  # --quiet
    bar = cli._progress(cfg, "run", quiet=False)
    bar.bar.fp = tty
    bar.update({"step": 8, "test_acc": 0.5, "time_s": 1.25})
    bar.close()
    text = tty.getvalue()
    assert "8/24" in text and "acc=0.500" in text and "sim_t=1.25s" in text


def test_run_prints_a_line_per_run_without_a_terminal(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: local_sgd\nn_workers: 2\nsteps: 4\neval_every: 2\ntask: {hidden: [4]}\ngrid: {seed: [0, 1]}\n")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    assert "[1/2]" in out and "[2/2]" in out and "step/s" not in err  # no bar when stderr is not a terminal


def test_empty_grid_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: local_sgd\ngrid: {seed: []}\n")
    for argv in (["run", str(cfg)], ["slurm", "submit", str(cfg), "--dry-run"], ["sweep", str(cfg)]):
        assert cli.main(argv) == 2
        assert "grid.seed: expected a non-empty list" in capsys.readouterr().err
