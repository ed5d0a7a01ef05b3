"""CIFAR-10: the python-version loader on a fixture written in that format, augmentation,
normalisation, partitions, ResNet-20, gradients and SimPy = stacked with augmentation on."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from harness.tasks import build_task
from harness.tasks.cifar10 import augment_params, channel_stats, crop_flip, load_cifar10
from harness.tasks.fixtures import write_cifar10
from harness.tasks.module import TaskDataError
from harness.tasks.partition import powerlaw
from harness.tasks.resnet import CifarResNet
from tests.test_tasks_torch import assert_same_runs, check_adapter, run_cfg, small_resnet


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("c10"), per_batch=24, test=20)


def test_loader_reads_the_python_version(root):
    x_tr, y_tr, x_te, y_te = load_cifar10(root)
    assert x_tr.shape == (120, 3, 32, 32) and x_te.shape == (20, 3, 32, 32) and x_tr.dtype == np.uint8
    with open(root / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    k = 5  # image 5 of batch 2: red plane first, then green, then blue, each row-major 32x32
    assert np.array_equal(x_tr[24 + k, 0].reshape(-1), raw[b"data"][k, :1024])
    assert np.array_equal(x_tr[24 + k, 2, 31], raw[b"data"][k, 3072 - 32:])
    assert y_tr[24 + k] == raw[b"labels"][k] and y_tr.dtype == np.int64
    assert np.array_equal(load_cifar10(root / "cifar-10-batches-py")[3], y_te)  # the inner directory works too


def test_missing_or_broken_data_is_one_line_naming_the_fix(tmp_path, root):
    with pytest.raises(TaskDataError, match=r"^task.root: no CIFAR-10 at .*put the python version "
                                            r"\(cifar-10-batches-py/data_batch_1..5, test_batch\) there$"):
        build_task({"name": "cifar10", "root": str(tmp_path)}, 2, 0)
    with pytest.raises(TaskDataError, match="task.root: not set"):
        build_task({"name": "cifar10"}, 2, 0)
    bad = write_cifar10(tmp_path / "bad", per_batch=4)
    (bad / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(TaskDataError, match="test_batch is not a CIFAR-10 python batch"):
        load_cifar10(bad)


def test_crop_flip_equals_pad_slice_and_mirror():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (5, 3, 32, 32), generator=g, dtype=torch.uint8)
    off = torch.tensor([[0, 0], [4, 4], [8, 3], [2, 8], [4, 4]])
    flip = torch.tensor([False, False, True, True, True])
    out = crop_flip(imgs, off, flip)
    padded = torch.nn.functional.pad(imgs, (4, 4, 4, 4))
    for k in range(5):
        ref = padded[k, :, off[k, 0]:off[k, 0] + 32, off[k, 1]:off[k, 1] + 32]
        assert torch.equal(out[k], ref.flip(-1) if flip[k] else ref)
    assert torch.equal(out[1], imgs[1])  # centre crop, no flip: the image itself
    assert (out[2, :, :, :] == 0).any()  # the black border shows after a shifted crop


def test_augmentation_is_a_function_of_seed_and_batch():
    idx = torch.arange(64).view(2, 32)
    (o1, f1), (o2, f2) = augment_params(idx, 3), augment_params(idx, 3)
    assert np.array_equal(o1, o2) and np.array_equal(f1, f2) and o1.shape == (2, 32, 2)
    row, _ = augment_params(idx[1], 3)  # a worker's batch alone ([B]) draws what it draws in the stack
    assert np.array_equal(row, o1[1]) and not np.array_equal(o1[0], o1[1])
    assert not np.array_equal(augment_params(idx, 4)[0], o1)
    offs, flips = augment_params(torch.arange(4000).view(10, 400), 0)
    assert offs.min() == 0 and offs.max() == 8 and 0.45 < flips.mean() < 0.55


def test_normalisation_and_batches(root):
    task = build_task(small_resnet(root, dtype="float32"), 2, 0)
    mean, std = channel_stats(task.x_train.numpy())
    ref = task.x_train.double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(mean, ref.mean(1).numpy()) and np.allclose(std, ref.std(1, unbiased=False).numpy())
    x, y = task.fetch("test", torch.arange(20), augment=False)
    z = x.double().transpose(0, 1).reshape(3, -1)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and torch.equal(y, task.y_test)
    assert abs(z.mean().item()) < 0.3 and 0.7 < z.std().item() < 1.3
    xa, _ = task.fetch("train", torch.arange(16).view(2, 8), augment=True)
    xn, _ = task.fetch("train", torch.arange(16).view(2, 8), augment=False)
    assert xa.shape == (2, 8, 3, 32, 32) and not torch.equal(xa, xn)


def test_partitions_label_skew_and_power_law_sizes(root):
    iid = build_task(small_resnet(root), 4, 0).shards
    dirichlet = build_task(small_resnet(root, partition="dirichlet", alpha=0.05, parts=4), 4, 0)
    pl = build_task(small_resnet(root, partition="powerlaw", exponent=1.5), 4, 0).shards
    for shards in (iid, dirichlet.shards, pl):
        assert sorted(np.concatenate(shards)) == list(range(120))
    y = dirichlet.y_train.numpy()
    top = [np.bincount(y[s], minlength=10).max() / len(s) for s in dirichlet.shards]
    assert np.median(top) > 0.3
    sizes = sorted(map(len, pl), reverse=True)
    assert sizes[0] > 3 * sizes[-1] and sizes[-1] >= 2
    w = np.arange(1, 11) ** -1.0
    big = sorted(map(len, powerlaw(np.zeros(10000), 10, 0, exponent=1.0)), reverse=True)
    assert np.allclose(np.array(big) / 10000, w / w.sum(), atol=0.003)  # Zipf shares


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_resnet20_size_and_gradients_equal_plain_modules(root, norm):
    n_params = sum(p.numel() for p in CifarResNet(20, 16, norm=norm).parameters())
    assert n_params == 269722  # BatchNorm and GroupNorm have the same affine parameters
    task = build_task(small_resnet(root, norm=norm), 4, 0)
    assert task.use_batched and (task.buffers.store != {}) == (norm == "batch")
    check_adapter(task, n=2)


def test_resnet_depth_error():
    with pytest.raises(ValueError, match="task.depth: a CIFAR ResNet has depth 6k"):
        CifarResNet(21)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_simpy_and_stacked_agree_with_augmentation(root, norm):
    cfg = run_cfg(small_resnet(root, norm=norm, partition="dirichlet", alpha=1.0), alg="local_sgd")
    a = assert_same_runs(cfg)
    assert a.test_acc.notna().any()


def _with_test_batch(tmp_path, name, **changes):
    """A fixture whose test_batch has ``changes`` (keys of the pickled dict, as str) applied."""
    root = write_cifar10(tmp_path / name, per_batch=4, test=3)
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({k.encode(): v for k, v in changes.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return root, path


PIXEL_FIX = ("expected integers 0..255; the python version stores uint8 0..255 (images as floats in [0, 1]: multiply "
             "by 255 and round to uint8)")
LABEL_FIX = "expected integers 0..9; CIFAR-10 has 10 classes, labelled 0..9"
BAD_BATCHES = {  # what a converted or hand-made batch gets wrong -> the end of the one-line error
    "float pixels in [0, 1]": ({"data": np.full((3, 3072), 0.5)}, f": pixels are float64 (e.g. 0.5); {PIXEL_FIX}"),
    "float pixels in 0..255": ({"data": np.full((3, 3072), 200.0)}, f": pixels are float64 (e.g. 200); {PIXEL_FIX}"),
    "pixels above 255": ({"data": np.full((3, 3072), 300, np.int64)}, f": pixels range over 300..300; {PIXEL_FIX}"),
    "pixels as a list with -1": ({"data": [[-1] * 3072] * 3}, f": pixels range over -1..-1; {PIXEL_FIX}"),
    "bool pixels": ({"data": np.ones((3, 3072), bool)}, f": pixels are bool (e.g. True); {PIXEL_FIX}"),
    "label 10": ({"labels": [0, 10, 1]}, f": labels range over 0..10; {LABEL_FIX}"),
    "label -1": ({"labels": [-1, 2, 1]}, f": labels range over -1..2; {LABEL_FIX}"),
    "float labels": ({"labels": [0.0, 1.5, 2.0]}, f": labels are float64 (e.g. 0); {LABEL_FIX}"),
    "no test image": ({"data": np.zeros((0, 3072), np.uint8), "labels": []},
                      " has data [0, 3072] and labels [0]; expected uint8 [N, 3072] and N labels, N >= 1"),
    "images as [N, 3, 32, 32]": ({"data": np.zeros((3, 3, 32, 32), np.uint8)},
                                 " has data [3, 3, 32, 32] and labels [3]; expected uint8 [N, 3072] and N labels, N >= 1"),
    "labels as a column": ({"labels": [[1], [2], [3]]},
                           " has data [3, 3072] and labels [3, 1]; expected uint8 [N, 3072] and N labels, N >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batches_are_one_line_naming_the_file_and_the_fix_never_cast(tmp_path, case):
    changes, end = BAD_BATCHES[case]
    root, path = _with_test_batch(tmp_path, "c", **changes)
    with pytest.raises(TaskDataError) as e:
        build_task(small_resnet(root), 2, 0)
    assert str(e.value) == f"task.root: {path}{end}"


def test_the_fixture_writes_what_it_is_asked_for(tmp_path):
    root = write_cifar10(tmp_path / "empty", per_batch=2, test=0)  # 0 test images: not per_batch of them
    with pytest.raises(TaskDataError, match=r"test_batch has data \[0, 3072\]"):
        load_cifar10(root)
    with pytest.raises(ValueError, match="per_batch: expected >= 1 .got 0. and test >= 0 .got -1. images"):
        write_cifar10(tmp_path / "bad", per_batch=0, test=-1)
