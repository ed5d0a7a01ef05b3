"""Results: the tidy table's schema, storage, merging, statistics, plots and report.

``results`` knows only the table schema (:mod:`results.schema`); it imports nothing from
the harness, the simulators or the topologies.

    import results
    df = results.load("runs/")                 # every run, cfg.* columns, status
    s = results.summary(df, target_acc=0.9)    # one row per run
    print(results.format_summary(s))
    results.write_report("runs/")              # runs/report/index.html
"""
from results.errors import ResultsError, ResultsWarning
from results.load import load, runs
from results.stats import aggregate, final_metrics, mean_ci, pareto_front, reduction_vs, summary, time_split
from results.store import read_run, write_json, write_table

__all__ = ["ResultsError", "ResultsWarning", "aggregate", "final_metrics", "format_summary", "load",
           "mean_ci", "pareto_front", "read_run", "reduction_vs", "runs", "summary", "time_split",
           "write_json", "write_report", "write_table"]


def __getattr__(name: str):
    """``write_report`` / ``format_summary`` load lazily (the report pulls in matplotlib)."""
    if name in ("write_report", "format_summary"):
        from results import report

        return getattr(report, name)
    raise AttributeError(f"module 'results' has no attribute {name!r}")
