"""File-system faults (issue 22, item 4): a full disk, a read-only one, a symlink loop and a
file in the way give `harness run`, `run --force` and `report` one line naming the path and
the cause (exit status 2, no traceback), and a full disk leaves no claim that makes the next
attempt skip the run as "being run elsewhere"."""
from __future__ import annotations

import json
import os
import time

import pytest

from harness import claims
from harness.cli import main
from tests.diskfaults import fill, remount, small_tmpfs

TASK = {"name": "quadratic", "dim": 4, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}
CONF = {"n_workers": 2, "steps": 4, "eval_every": 2, "task": TASK, "algorithm": {"name": "sync_sgd", "lr": 0.1}}
FIX = ("; free space or fix that path (permissions, a file or link in the way), or give --out another directory; "
       "then run the same command again")


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(json.dumps(CONF))
    return path


def harness(capsys, *argv) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``harness ARGV`` run in this process."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def run_dir(out):
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def test_a_full_disk_is_one_line_and_leaves_no_claim_that_skips_the_next_attempt(tmp_path, conf, capsys):
    with small_tmpfs(tmp_path / "fs") as fs:
        full = fill(fs)
        out = fs / "out"
        for force in ([], ["--force"]):
            rc, err = harness(capsys, "run", conf, "--out", out, "--quiet", *force)
            d = run_dir(out)
            assert (rc, err) == (2, [f"harness: error: {d / claims.CLAIM}: No space left on device{FIX}"])
            assert sorted(os.listdir(d)) == []  # no empty claim.json, no temp file
        full.unlink()
        rc, err = harness(capsys, "run", conf, "--out", out, "--quiet")
        assert rc == 0 and err == [], err
        assert claims.status(d) == "finished" and not (d / claims.CLAIM).exists()
        full = fill(fs)  # full again: the run's files are there, the report's are not
        rc, err = harness(capsys, "report", out)
        assert (rc, err) == (2, [f"harness: error: {out / 'report' / 'summary.csv'}: No space left on device{FIX}"])
        assert [p.name for p in (out / "report").iterdir()] == []  # no half-written or temp file


def test_a_read_only_disk_is_one_line_for_run_force_and_report(tmp_path, conf, capsys):
    with small_tmpfs(tmp_path / "fs", "1m") as fs:
        out = fs / "out"
        assert harness(capsys, "run", conf, "--out", out, "--quiet")[0] == 0
        d = run_dir(out)
        remount(fs, "ro")
        try:
            expect = {("run", "--out", fs / "new"): fs / "new",
                      ("run", "--out", out, "--force"): d / claims.CLAIM,
                      ("report", out): out / "report"}
            for argv, path in expect.items():
                rc, err = harness(capsys, *argv[:1], conf, *argv[1:]) if argv[0] == "run" else harness(capsys, *argv)
                assert (rc, err) == (2, [f"harness: error: {path}: Read-only file system{FIX}"]), argv
        finally:
            remount(fs, "rw")


def test_a_symlink_loop_or_a_file_in_the_way_is_one_line(tmp_path, conf, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for force in ([], ["--force"]):
        rc, err = harness(capsys, "run", conf, "--out", loop, "--quiet", *force)
        assert rc == 2 and len(err) == 1 and err[0].startswith(f"harness: error: {loop}/")
        assert err[0].endswith(f": Too many levels of symbolic links{FIX}")
    rc, err = harness(capsys, "report", loop)
    assert (rc, err) == (2, [f"harness: error: DIR: {str(loop)!r}: a broken or looping symbolic link; give a "
                             f"directory of runs (harness run CONFIG --out {loop} writes one)"])
    out = tmp_path / "out"
    assert harness(capsys, "run", conf, "--out", out, "--quiet")[0] == 0
    rc, err = harness(capsys, "report", out, "--out", loop)
    assert (rc, err) == (2, [f"harness: error: {loop}: File exists{FIX}"])
    d = run_dir(out)
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    d.write_text("a file where the run's directory goes")
    for force in ([], ["--force"]):
        assert harness(capsys, "run", conf, "--out", out, "--quiet", *force) == (
            2, [f"harness: error: {d}: File exists{FIX}"])
    (out / "report").write_text("a file where the report goes")
    rc, err = harness(capsys, "report", out)
    assert (rc, err) == (2, [f"harness: error: --out: {str(out / 'report')!r} is a file, not a directory; give "
                             "--out a directory (new or an earlier report)"])


def _empty_claim(d, age_s):
    d.mkdir(parents=True, exist_ok=True)
    path = d / claims.CLAIM
    path.write_bytes(b"")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_an_empty_or_garbled_claim_is_stale_once_older_than_a_write_takes(tmp_path):
    notes = []
    _empty_claim(tmp_path / "a", age_s=0)  # as a writer that has created it and is writing it
    assert claims.acquire(tmp_path / "a", "a", notes.append) is None
    assert "is being run elsewhere (an unreadable claim)" in notes[-1]
    path = _empty_claim(tmp_path / "b", age_s=claims.UNREADABLE_GRACE_S + 3)  # left by a full disk
    got = claims.acquire(tmp_path / "b", "b", notes.append)
    assert got is not None and notes[-1] == ("harness: note: run b: took over a stale claim (an unreadable claim: "
                                             "it is empty or not a claim (a write that never completed, e.g. on "
                                             "a full disk))")
    assert json.loads(path.read_text())["token"] == got.info["token"]
    got.release()
    assert os.listdir(tmp_path / "b") == []
