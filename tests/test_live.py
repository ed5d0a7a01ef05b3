"""Live metrics (issue [27]): rows handed to callbacks while a run runs, read back as a partial
table; the callback registry and the ``live:`` config; TensorBoard event files; and the
recorders' ``state_dict`` for checkpoints (a restored recorder continues the very same table)."""
from __future__ import annotations

import copy
import io
import os
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.callbacks import CALLBACKS, Callback, register_callback
from harness.config import ConfigError, expand
from harness.experiment import build, run_to_dir
from harness.recording import Diverged, Recorder
from results.load import LIVE_DIR, LIVE_FILE, load
from tests.helpers import small

CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def spy(monkeypatch):
    """A registered callback ``spy`` that loads the results directory at every delivery
    (what ``harness report`` would read at that moment) and records it. Its own time would
    space the deliveries out (the cost rule): here every evaluation row delivers."""
    monkeypatch.setattr("harness.live.COST_FACTOR", 0)
    seen = []

    class Spy(Callback):
        def on_rows(self, frame):
            df = load(self.info.run_dir.parent)
            mine = df[df["run_id"] == self.info.run_id]
            seen.append({"rank": self.info.rank, "new": len(frame), "rows": len(mine),
                         "status": set(mine["status"]), "partial": set(mine["partial"]),
                         "files": sorted(p.name for p in self.info.run_dir.rglob("*.parquet")),
                         "acc": int(frame["test_acc"].notna().sum()) if "test_acc" in frame else 0})

        def on_end(self, status):
            seen.append({"rank": self.info.rank, "end": status})

    register_callback("spy", replace=True)(Spy)
    yield seen
    del CALLBACKS["spy"]


# -- live rows on the simulators ----------------------------------------------------------------
def test_a_running_run_is_read_as_partial_and_a_finished_one_from_its_table(tmp_path, spy):
    cfg = small("sync_sgd", live={"every_s": 1000, "callbacks": ["spy"]})  # at evaluation rows
    run_dir, ran = run_to_dir(cfg, tmp_path)
    got = [s for s in spy if "new" in s]
    during = [s for s in got if s["status"] == {"running"}]
    assert ran and len(during) >= 3, spy  # at the evaluation rows (steps 0, 8, 16; 24 may come at the end)
    for s in during:  # the parquet callback runs first: load() sees this delivery's rows already
        assert s["partial"] == {True} and s["files"] == [LIVE_FILE]
        assert s["rows"] == sum(g["new"] for g in got[:got.index(s) + 1])
    for s in got[len(during):]:  # rows after the last Record come once the final table is written
        assert s["status"] == {"finished"} and s["partial"] == {False} and s["files"] == ["metrics.parquet"]
    assert spy[-1] == {"rank": None, "end": "finished"}
    assert not (run_dir / LIVE_FILE).exists()
    df = load(tmp_path)
    assert set(df["partial"]) == {False} and set(df["status"]) == {"finished"}
    assert sum(s["new"] for s in got) == len(df)  # each row handed over once


def test_a_failed_run_keeps_its_rows_so_far_marked_partial(tmp_path, spy, monkeypatch):
    cfg = small("sync_sgd", live={"every_s": 1000, "callbacks": ["spy"]})

    def boom(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("harness.experiment.write_table", boom)  # the final table cannot be written
    with pytest.raises(OSError):
        run_to_dir(cfg, tmp_path)
    assert spy[-1]["end"] == "failed"
    df = load(tmp_path)
    assert set(df["status"]) == {"failed"} and set(df["partial"]) == {True} and len(df) > 0


@pytest.mark.slow  # the report draws every figure
def test_harness_report_shows_a_running_runs_rows_so_far(tmp_path, monkeypatch):
    import json

    from results.report import write_report

    monkeypatch.setattr("harness.experiment.write_table", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
    cfg = small("sync_sgd", live={"every_s": 1000})
    with pytest.raises(OSError):
        run_to_dir(cfg, tmp_path)
    record = tmp_path / cfg.run_id / "run.json"  # as a run still running (or killed) leaves it
    record.write_text(json.dumps({**json.loads(record.read_text()), "status": "running", "error": None}))
    out = write_report(tmp_path)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["running"] and summary["rounds"].iloc[0] > 0
    page = (out / "index.html").read_text()
    assert "1 run(s) did not finish" in page and "running" in page


def test_every_s_0_and_no_callbacks_writes_nothing_live(tmp_path, spy):
    stale = tmp_path / small("sync_sgd").run_id / LIVE_FILE  # a killed earlier attempt's rows
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    cfg = small("sync_sgd", live={"every_s": 0})
    assert cfg.run_id == small("sync_sgd").run_id
    run_dir, _ = run_to_dir(cfg, tmp_path, force=True)
    assert not stale.exists() and not spy
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == ["metrics.parquet", "run.json"]


def test_a_failing_callback_is_one_warning_and_the_run_finishes(tmp_path, capfd):
    class Broken(Callback):
        def on_rows(self, frame):
            raise RuntimeError("disk on fire")

    register_callback("broken", replace=True)(Broken)
    try:
        cfg = small("sync_sgd", live={"every_s": 1e-9, "callbacks": ["broken"]})
        run_dir, _ = run_to_dir(cfg, tmp_path)
    finally:
        del CALLBACKS["broken"]
    err = [line for line in capfd.readouterr().err.splitlines() if "broken" in line]
    assert err == [f"harness: warning: live callback 'broken' failed in on_rows: RuntimeError: disk on fire; it is "
                   f"off for the rest of run {cfg.run_id}"]
    assert set(load(tmp_path)["status"]) == {"finished"}


def test_deliveries_wait_50_times_as_long_as_the_last_took():
    import time

    from harness.callbacks import RunInfo
    from harness.live import Live

    class Slow(Callback):
        def on_rows(self, frame):
            time.sleep(0.02)

    class Rows:
        def take_new(self):
            return [{"step": 1}]

    live = Live({"slow": Slow()}, 1e-9, RunInfo("r", Path("."), None))
    assert live.due(False) and live.due(True)
    live.tick(Rows(), True)
    assert live.gap >= 50 * 0.02 and not live.due(True) and not live.due(False)
    live.last -= live.gap
    assert live.due(True)
    assert not Live({}, 0, RunInfo("r", Path("."), None)).due(True)  # every_s 0: only at the end


# -- the config and the registry ----------------------------------------------------------------
def test_live_is_neither_in_the_run_id_nor_a_setting(tmp_path):
    base = small("sync_sgd")
    other = small("sync_sgd", live={"every_s": 3, "callbacks": ["tensorboard"]})
    assert other.run_id == base.run_id and base.live.every_s == 10 and base.live.callbacks == []
    run_to_dir(small("sync_sgd", live={"every_s": 0}), tmp_path)
    assert not [c for c in load(tmp_path).columns if c.startswith(("cfg.live", "cfg.checkpoint"))]


def test_unknown_callback_is_one_line_with_did_you_mean():
    with pytest.raises(ConfigError) as e:
        small("sync_sgd", live={"callbacks": ["tensorbord"]})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("live.callbacks: unknown callback 'tensorbord'; did you mean "
                                              "'tensorboard'?"), msg
    with pytest.raises(ConfigError, match=r"^live.every_s: Input should be greater than or equal to 0"):
        small("sync_sgd", live={"every_s": -1})


def test_register_callback_refuses_an_existing_name_unless_replace():
    class Mine(Callback):
        pass

    with pytest.raises(ValueError, match=r"register_callback\('tensorboard'\): a callback of that name exists"):
        register_callback("tensorboard")(Mine)
    with pytest.raises(TypeError, match="expected a Callback subclass"):
        register_callback("nope")(object)
    register_callback("mine")(Mine)
    register_callback("mine")(Mine)  # the same class again (a plugin imported twice): no conflict
    register_callback("mine", replace=True)(type("Mine", (Callback,), {}))
    del CALLBACKS["mine"]


# -- TensorBoard -----------------------------------------------------------------------------
def _event_accumulator():
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        msg = "tensorboard not installed: it reads the event files back (pip install tensorboard)"
        if CI:
            pytest.fail(f"{msg} (CI=true: the test dependencies must be installed)")
        pytest.skip(msg)
    return EventAccumulator


def test_tensorboard_event_files_read_back(tmp_path):
    EventAccumulator = _event_accumulator()
    cfg = small("sync_sgd", live={"every_s": 1e-9, "callbacks": ["tensorboard"]})
    run_dir, _ = run_to_dir(cfg, tmp_path)
    df = load(tmp_path)
    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    assert {"train/loss", "train/bytes_sent", "train/time_s", "test/acc", "test/loss",
            "eval/bytes_sent", "eval/time_s"} <= set(ea.Tags()["scalars"])
    ev = df[df["worker"] == -1]
    assert [e.step for e in ea.Scalars("test/acc")] == ev["step"].tolist()
    assert [e.value for e in ea.Scalars("test/acc")] == pytest.approx(ev["test_acc"].tolist(), rel=1e-6)
    steps = df[(df["worker"] >= 0) & (df["event"] == "step")].groupby("step")
    loss = steps["train_loss"].mean().dropna()
    assert [e.step for e in ea.Scalars("train/loss")] == loss.index.tolist()  # every step once, in order
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx(loss.tolist(), rel=1e-6)
    assert [e.value for e in ea.Scalars("train/bytes_sent")] == pytest.approx(steps["bytes_sent"].sum().tolist())


# -- real ranks (loopback threads through run_rank, the launchers' code path) ---------------------
@pytest.fixture
def plain_sgd():
    """A plain generator algorithm (no parts): the real ranks' interpreter runs it as it is."""
    from harness import algorithms
    from harness.ops import AllReduce, Grad, Record

    @algorithms.register("live_plain_sgd", replace=True)
    def live_plain_sgd(ctx, x, *, lr: float = 0.1):
        for t in range(ctx.steps):
            loss, g = yield Grad(x)
            g = yield AllReduce(g)
            x = x - lr * g
            yield Record(step=t + 1, x=x, loss=loss)
        return x

    yield "live_plain_sgd"
    del algorithms.ALGORITHMS["live_plain_sgd"]


def test_real_ranks_write_their_own_live_rows(tmp_path, spy, plain_sgd):
    from harness.backends.loopback import LoopbackTransport, LoopbackWorld
    from harness.backends.runner import run_rank

    cfg = small("sync_sgd", backend="mpi", algorithm={"name": plain_sgd}, live={"every_s": 1000, "callbacks": ["spy"]})
    cfg = cfg.model_copy(update={"backend": "loopback"})
    world, errors = LoopbackWorld(4, 30), []

    def rank(r):
        try:
            run_rank(cfg, tmp_path, lambda: LoopbackTransport(world, r))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    during = [s for s in spy if "new" in s and s["status"] == {"running"}]
    assert {s["rank"] for s in during} == {0, 1, 2, 3}
    assert all(s["partial"] == {True} and s["files"] and set(s["files"]) <= {f"rank-{k}.parquet" for k in range(4)}
               for s in during)
    assert not any(s["acc"] for s in during)  # test metrics come after the run (off the clock)...
    last0 = [s for s in spy if s["rank"] == 0 and "new" in s][-1]
    assert last0["acc"] == 4  # ...to rank 0's callbacks, with the consensus rows (steps 0, 8, 16, 24)
    assert sorted(s["end"] for s in spy if "end" in s) == ["finished"] * 4
    run_dir = tmp_path / cfg.run_id
    assert not (run_dir / LIVE_DIR).exists()
    df = load(tmp_path)
    assert set(df["partial"]) == {False} and len(df) == 4 * 25 + 4


# -- state_dict: a restored recorder continues the same table -----------------------------------
CALLS = ("worker", "event", "check_loss", "drop", "spread", "offer", "update", "consensus")


def _tape(rec) -> list:
    """Record the backend's calls into ``rec`` (arguments copied as they were then)."""
    tape, depth = [], [0]
    for name in CALLS:
        fn = getattr(rec, name)

        def wrapped(*a, _fn=fn, _name=name, **kw):
            if depth[0] == 0:
                tape.append((_name, copy.deepcopy(a), copy.deepcopy(kw)))
            depth[0] += 1
            try:
                return _fn(*a, **kw)
            finally:
                depth[0] -= 1

        setattr(rec, name, wrapped)
    return tape


def _play(rec, calls):
    for name, a, kw in calls:
        try:
            getattr(rec, name)(*copy.deepcopy(a), **copy.deepcopy(kw))
        except Diverged:
            pass


def _taped(cfg):
    backend, x0 = build(cfg)
    rec = backend.run.recorder
    tape = _tape(rec)
    try:
        backend.execute(x0)
    except Diverged:
        pass
    return rec, tape


def _fresh(rec, cls=Recorder):
    return cls(rec.meta, rec.n, rec.steps, rec.evaluate, rec.eval_every, rec.log_every,
               on_divergence=rec.on_divergence, loss_factor=rec.watch.factor)


def _through_disk(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only: plain data only


@pytest.mark.parametrize("backend, over", [
    ("simpy", {}),  # stragglers: evaluation steps and dist_to_mean wait for slow workers
    ("stacked", {}),
    ("simpy", {"algorithm": {"name": "sync_sgd", "lr": 3.0}, "on_divergence": "continue", "divergence": {"loss_factor": 2}}),  # loss watch
    ("stacked", {"algorithm": {"name": "sync_sgd", "lr": 3.0}, "on_divergence": "continue", "divergence": {"loss_factor": 2}}),
])
def test_recorder_state_dict_continues_the_same_table(backend, over):
    rec, tape = _taped(small("sync_sgd", backend=backend, **over))
    whole = _fresh(rec)
    _play(whole, tape)
    pd.testing.assert_frame_equal(whole.frame(), rec.frame())  # the replay is faithful
    if over:
        assert rec.diverged is not None and "first" in rec.diverged  # a finite blow-up: first losses matter
    for cut in range(1, len(tape), max(1, len(tape) // 7)):
        first = _fresh(rec)
        _play(first, tape[:cut])
        second = _fresh(rec)
        second.load_state_dict(_through_disk(first.state_dict()))
        _play(second, tape[cut:])
        pd.testing.assert_frame_equal(second.frame(), whole.frame())
        assert second.diverged == whole.diverged


def test_deferred_recorder_state_dict_keeps_the_rows_waiting_for_test_metrics():
    from harness.backends.rank_clock import DeferredRecorder

    rec, tape = _taped(small("sync_sgd", backend="stacked"))
    whole = _fresh(rec, DeferredRecorder)
    _play(whole, tape)
    whole.finish()
    pd.testing.assert_frame_equal(whole.frame(), rec.frame())
    cut = len(tape) // 2
    first = _fresh(rec, DeferredRecorder)
    _play(first, tape[:cut])
    assert first._later  # consensus rows waiting for their test metrics
    second = _fresh(rec, DeferredRecorder)
    second.load_state_dict(_through_disk(first.state_dict()))
    _play(second, tape[cut:])
    second.finish()
    pd.testing.assert_frame_equal(second.frame(), whole.frame())


def test_a_pickled_recorder_leaves_its_live_callbacks_behind():
    rec, _ = _taped(small("sync_sgd", backend="stacked"))
    rec.live, rec._sent = object(), 5  # a Live holds open files; a checkpoint pickles the backend whole
    state = rec.__getstate__()
    assert state["live"] is None and state["_sent"] == 0 and rec.live is not None
