"""Text: byte/char tokens from a UTF-8 file, the split by position, windows, partitions, the
GPT's gradients, perplexity in the table, SimPy = stacked, and that it learns."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.experiment import simulate
from harness.tasks import build_task
from harness.tasks.fixtures import write_text
from harness.tasks.module import TaskDataError
from harness.tasks.text import load_tokens
from tests.test_tasks_torch import assert_same_runs, check_adapter, run_cfg, small_gpt


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("txt") / "stories.txt", stories=80)


def test_byte_and_char_tokens(path):
    text = path.read_text(encoding="utf-8")
    raw = path.read_bytes()
    b, vb, _ = load_tokens(path, "byte")
    c, vc, chars = load_tokens(path, "char")
    assert vb == 256 and bytes(b.tolist()) == raw
    assert len(c) == len(text) < len(b) and vc == len(set(text)) and chars == sorted(set(text))  # "ë", "é": 2 bytes
    assert "".join(chars[i] for i in c[:40]) == text[:40]
    task = build_task(small_gpt(path, tokens="char"), 2, 0)
    assert task.vocab == vc and task.decode(task.tokens[:25]) == text[:25]
    assert build_task(small_gpt(path), 2, 0).decode(torch.tensor(list(raw[:30]))) == raw[:30].decode()


def test_errors_are_one_line(tmp_path, path):
    with pytest.raises(TaskDataError, match=r"^task.path: no text file at .*give any UTF-8 text file"):
        build_task(small_gpt(tmp_path / "missing.txt"), 2, 0)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café crème".encode("latin-1") * 50)
    with pytest.raises(TaskDataError, match=r"latin1.txt is not UTF-8 \(byte 3\); use tokens: byte"):
        build_task(small_gpt(bad, tokens="char"), 2, 0)
    assert build_task(small_gpt(bad, batch_size=2), 2, 0).vocab == 256  # bytes: any file
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(TaskDataError, match="too few for windows of 17"):
        build_task(small_gpt(short), 2, 0)
    with pytest.raises(TaskDataError, match="task.path: not set"):
        build_task({"name": "text"}, 2, 0)
    with pytest.raises(ValueError, match="task.width: 15 channels do not split into 2 heads"):
        build_task(small_gpt(path, width=15), 2, 0)


def test_split_by_position_and_windows(path):
    task = build_task(small_gpt(path, stride=8, val_fraction=0.25), 2, 0)
    n = len(task.tokens)
    n_tr = int(n * 0.75)
    assert task.starts["test"] == n_tr and task.n_train == (n_tr - 17) // 8 + 1
    x, y = task.fetch("train", torch.tensor([0, task.n_train - 1]), augment=True)
    assert torch.equal(x[0], task.tokens[:16].long()) and torch.equal(y[0], task.tokens[1:17].long())
    last = (task.n_train - 1) * 8
    assert last + 17 <= n_tr and torch.equal(y[1], task.tokens[last + 1:last + 17].long())  # never past the split
    xv, _ = task.fetch("test", torch.tensor([[0, 1]]), augment=False)
    assert xv.shape == (1, 2, 16) and torch.equal(xv[0, 1], task.tokens[n_tr + 8:n_tr + 24].long())


def test_partitions_iid_contiguous_and_power_law(path):
    shards = {p: build_task(small_gpt(path, partition=p), 4, 0).shards for p in ("iid", "contiguous", "powerlaw")}
    n = sum(map(len, shards["iid"]))
    for s in shards.values():
        assert sorted(np.concatenate(s)) == list(range(n))
    assert all(np.array_equal(s, np.arange(s[0], s[-1] + 1)) for s in shards["contiguous"] + shards["powerlaw"])
    assert not all(np.array_equal(s, np.arange(s[0], s[-1] + 1)) for s in shards["iid"])
    sizes = sorted(map(len, shards["powerlaw"]))
    assert sizes[-1] > 2.5 * sizes[0]


def test_gpt_gradients_equal_plain_modules(path):
    task = build_task(small_gpt(path), 4, 0)
    assert task.use_batched and task.module.head.weight is task.module.wte.weight  # tied, stored once
    assert task.dim == sum(p.numel() for p in task.module.parameters())
    check_adapter(task, n=2)


def test_simpy_and_stacked_agree_and_report_perplexity(path):
    a = assert_same_runs(run_cfg(small_gpt(path, partition="contiguous"), alg="diloco"))
    ev = a[a.worker == -1]
    assert np.allclose(ev.test_ppl, np.exp(ev.test_loss)) and ev.test_ppl.iloc[0] == pytest.approx(256, rel=0.1)


def test_it_learns(path):
    cfg = run_cfg(small_gpt(path, tokens="char", width=32, batch_size=8), "stacked", "sync_sgd", steps=150,
                  eval_every=150, algorithm={"name": "sync_sgd", "lr": 0.3, "momentum": 0.9})
    df, _ = simulate(cfg)
    ev = df[df.worker == -1].sort_values("step")
    vocab = build_task(cfg.task, 4, 1).vocab
    assert ev.test_loss.iloc[0] == pytest.approx(math.log(vocab), rel=0.1)
    assert ev.test_loss.iloc[-1] < 0.5 * ev.test_loss.iloc[0], ev.test_loss.tolist()


def test_bf16_training_counts_bytes_at_wire_precision(path):
    """precision: bf16 makes payloads travel in bf16: 2 bytes per element on every backend."""
    from harness.cost import NetworkSpec

    out = {}
    for prec in ("fp32", "bf16"):
        task = small_gpt(path, dtype="float32", precision=prec)
        cfg = run_cfg(task, "stacked", "sync_sgd", steps=2, network={"latency_s": 0.001, "bandwidth_Bps": 1e7})
        df, x = simulate(cfg)
        sim, _ = simulate(cfg.model_copy(update={"backend": "simpy"}))
        last = df[(df.worker == 0) & (df.step == 2)].bytes_sent.item()
        assert last == sim[(sim.worker == 0) & (sim.step == 2)].bytes_sent.item()
        out[prec] = (last, x.shape[1])
    d = out["fp32"][1]
    ring = lambda b: NetworkSpec().allreduce_cost(b, range(4)).traffic[0].sent  # noqa: E731
    assert out["fp32"][0] == 2 * ring(4 * d) and out["bf16"][0] == 2 * ring(2 * d)


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    from harness.tasks.fixtures import main as fixtures_main

    p = write_text(tmp_path / "t.txt", stories=5)

    def fail(self):
        raise OSError(5, "Input/output error", str(self))

    monkeypatch.setattr(Path, "read_bytes", fail)  # a bad disk, a stale NFS handle (root reads past chmod)
    with pytest.raises(TaskDataError) as e:
        build_task(small_gpt(p), 2, 0)
    assert str(e.value) == f"task.path: cannot read {p} (Input/output error); give a readable UTF-8 text file"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="stories: expected >= 1, got 0"):
        write_text(tmp_path / "none.txt", stories=0)
    with pytest.raises(SystemExit):
        fixtures_main(["text", str(tmp_path / "neg.txt"), "--stories", "-1"])
    assert not (tmp_path / "neg.txt").exists()
