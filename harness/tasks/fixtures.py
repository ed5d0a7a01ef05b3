"""Tiny stand-ins for the real data sets, written in the real on-disk formats.

For tests and smoke runs on machines without the data (nothing is downloaded):

    python -m harness.tasks.fixtures cifar10 DIR [--per-batch 64]   # DIR/cifar-10-batches-py/...
    python -m harness.tasks.fixtures text FILE [--stories 200]      # a UTF-8 text file

The CIFAR-10 fixture has the python version's layout and pickles (``b'data'`` uint8
``[N, 3072]``, ``b'labels'``, ``b'batch_label'``, ``b'filenames'``, plus ``batches.meta``);
its images are learnable: a class-dependent colour and stripe pattern plus noise. The text
fixture is short generated "stories" with a small vocabulary (ASCII and a few non-ASCII
characters, so byte and character tokens differ).
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:32, 0:32]
    imgs = np.empty((n, 3, 32, 32), dtype=np.float64)
    for k, c in enumerate(labels):
        colour = 60 + 15 * np.array([c, (3 * c) % 10, (7 * c) % 10])
        stripes = 40 * np.sin((xx * np.cos(c) + yy * np.sin(c)) * (0.3 + 0.05 * c))
        imgs[k] = colour[:, None, None] + stripes + rng.normal(0, 20, (3, 32, 32))
    return np.clip(imgs, 0, 255).astype(np.uint8).reshape(n, 3072), labels.tolist()


def write_cifar10(root: str | Path, per_batch: int = 64, test: int | None = None, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` with 5 training batches of ``per_batch`` images and
    a test batch of ``test`` (default ``per_batch``; 0 writes an empty one, which the loader
    refuses: for its tests); returns ``root``."""
    test = per_batch if test is None else test
    if per_batch < 1 or test < 0:
        raise ValueError(f"per_batch: expected >= 1 (got {per_batch}) and test >= 0 (got {test}) images")
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = per_batch if name != "test_batch" else test
        data, labels = fake_images(n, seed * 100 + k)
        label = b"testing batch 1 of 1" if name == "test_batch" else f"training batch {k + 1} of 5".encode()
        batch = {b"batch_label": label, b"labels": labels, b"data": data,
                 b"filenames": [f"fake_{k}_{i}.png".encode() for i in range(n)]}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_batch,
                     b"num_vis": 3072}, f, protocol=2)
    return Path(root)


def write_text(path: str | Path, stories: int = 200, seed: int = 0) -> Path:
    """A TinyStories-like UTF-8 file of ``stories`` short generated stories."""
    if stories < 1:
        raise ValueError(f"stories: expected >= 1, got {stories}")
    rng = np.random.default_rng(seed)
    names = ["Lily", "Tom", "Zoë", "Ben", "Mia", "José"]
    things = ["ball", "cat", "tree", "boat", "cake", "star"]
    moods = ["happy", "sad", "brave", "sleepy", "curious"]
    out = []
    for _ in range(stories):
        a, t, m = rng.choice(names), rng.choice(things), rng.choice(moods)
        out.append(f"Once upon a time, {a} had a {t}. {a} was {m}. One day the {t} went away. "
                   f"{a} looked for the {t} and found it. The end.\n")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(out), encoding="utf-8")
    return p


def _count(text: str) -> int:
    """argparse type: a whole number >= 1 (0 or -3 images would be a traceback or an empty set)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m harness.tasks.fixtures", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("cifar10", help="a tiny CIFAR-10 (python version) directory")
    c.add_argument("root")
    c.add_argument("--per-batch", type=_count, default=64, help="images per batch, >= 1")
    t = sub.add_parser("text", help="a small UTF-8 text file")
    t.add_argument("path")
    t.add_argument("--stories", type=_count, default=200, help="stories, >= 1")
    a = ap.parse_args(argv)
    where = write_cifar10(a.root, a.per_batch) if a.kind == "cifar10" else write_text(a.path, a.stories)
    print(where)


if __name__ == "__main__":
    main()
