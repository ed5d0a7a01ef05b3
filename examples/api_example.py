"""The Python API in one script (docs/api.md): register an algorithm, run a config given as a
dict on the stacked simulator, get the table back, summarise it and write the report.

    .venv/bin/python examples/api_example.py [OUT_DIR]      (default: runs/api-example)

Runs in a few seconds on a laptop CPU; tests/test_api.py runs it.
"""
from __future__ import annotations

import sys

import harness
from harness.ops import AllReduce, Grad, Record


@harness.register("example_local_sgd", replace=True)  # replace=True: re-running a notebook cell is fine
def example_local_sgd(ctx, x, *, period: int = 4, lr: float = 0.1):
    """Local SGD: `period` local steps, then average the models."""
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        x = x - lr * g
        if (t + 1) % period == 0:
            x = yield AllReduce(x, op="mean")
        yield Record(step=t + 1, x=x, loss=loss)
    return x


CONFIG = {
    "name": "api-example",
    "n_workers": 4, "steps": 100, "eval_every": 20, "target_acc": 0.8,
    "task": {"name": "digits", "hidden": [16]},
    "cases": [{"algorithm": {"name": "sync_sgd", "lr": 0.1}},
              {"algorithm": {"name": "example_local_sgd", "period": 4, "lr": 0.1}}],
    "grid": {"seed": [0, 1]},
}


def main(out: str = "runs/api-example") -> None:
    df, params = harness.run(CONFIG, backend="stacked", out=out, params=True)  # the table (pandas), final models
    print(f"{df.run_id.nunique()} runs, {len(df)} rows; final parameters of "
          f"{sum(p is not None for p in params.values())} runs")
    import results
    from results.report import format_summary

    print(format_summary(results.summary(df, target_acc=0.8)))  # one row per setting, mean ± 95 % CI over seeds
    path = harness.report(out)  # summary.csv, figures, index.html
    print(f"report: {path / 'index.html'}")
    assert harness.load(out).run_id.nunique() == df.run_id.nunique()


if __name__ == "__main__":
    main(*sys.argv[1:2])
