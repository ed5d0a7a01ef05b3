"""``harness topology NAME --n 16 [--seed S] [--param k=v ...] [--steps K] [--out f.png]``.

Prints degree (min/mean/max), diameter, SLEM and spectral gap of a topology; for a dynamic
one, those of each of the first K steps and the empirical consensus rate over them
(``||(I - J) W(K-1) ... W(0)||_2^(1/K)``). With ``--out`` it draws the graph (a row of
subplots, one per step, for a dynamic graph) to a PNG with matplotlib and networkx.
``--param`` values are read as YAML: ``--param d=4 --param graphs=[ring,exponential]``.

Examples::

    harness topology torus --n 16
    harness topology one_peer_exponential --n 8 --out onepeer.png
    harness topology churn --n 12 --param base=torus --param p=0.2 --steps 20
"""
from __future__ import annotations

import math

import networkx as nx
import yaml

from topologies.base import TopologyError
from topologies.registry import NAMES, build
from topologies.spectral import consensus_rate, summary
from topologies.static import lattice_shape

MAX_ROWS, MAX_PANELS = 32, 6


def add_arguments(p, name: str = "topology") -> None:
    """The arguments of ``harness topology`` on ``p``, a subcommand of the one parser tree
    (:func:`harness.cli._parser`); description and examples from this module's docstring."""
    text = __doc__.replace("``", "").replace("::", ":")  # help is plain text, not docstring markup
    head, _, examples = text.partition("Examples:")
    p.description = head.strip()
    p.epilog = "examples:\n" + "\n".join(f"  {line.strip()}" for line in examples.strip().splitlines())
    p.set_defaults(func=cmd_topology)
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(NAMES)} (harness list topologies: their "
                   "parameters)")
    p.add_argument("--n", type=int, default=16, help="number of nodes")
    p.add_argument("--seed", type=int, default=0, help="seed of random and dynamic graphs")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="a spec parameter, e.g. d=4, p=0.3, weights=metropolis, base=torus; repeatable "
                   "(default: the topology's defaults)")
    p.add_argument("--steps", type=int, default=None,
                   help="dynamic graphs: steps shown and consensus window (default: period, or 8)")
    p.add_argument("--out", default=None, metavar="FILE.png", help="draw the graph to this PNG file "
                   "(default: no drawing)")


def _parser():
    """The ``harness topology`` subcommand of the one tree (tests and documentation)."""
    from harness.cli import _parser as tree

    return next(a for a in tree(["topology"])._actions if hasattr(a, "choices") and
                isinstance(a.choices, dict)).choices["topology"]


def parse_params(items: list[str]) -> dict:
    """``["d=4", "graphs=[ring, exponential]"]`` -> ``{"d": 4, "graphs": ["ring", "exponential"]}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TopologyError(f"topology.param: expected KEY=VALUE; got {item!r}; write e.g. --param d=4")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _fmt_diam(d) -> str:
    return "inf (disconnected)" if d == math.inf else str(d)


def _layout(topo) -> dict:
    while topo.base is not None:  # perturbed graphs are drawn where their base graph is
        topo = topo.base
    g = topo.graph(0)
    und = g.to_undirected() if g.is_directed() else g
    if topo.name in ("torus", "grid"):
        _, cols = lattice_shape(topo.name, topo.n, topo.params.get("rows"), 1)
        return {v: (v % cols, -(v // cols)) for v in range(topo.n)}
    if topo.name == "hypercube":
        return nx.kamada_kawai_layout(und)
    if topo.name == "star":
        c = int(topo.params.get("center", 0))
        return nx.shell_layout(und, [[c], [v for v in range(topo.n) if v != c]])
    return nx.circular_layout(sorted(und.nodes))


def draw(topo, steps: list[int], path: str) -> None:
    """Draw the graph of each step in ``steps`` side by side into ``path`` (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(3.2 * len(steps), 3.4))
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    pos = _layout(topo)
    for ax, t in zip(axes, steps):
        g = topo.graph(t)
        colour = ["#bbbbbb" if g.degree(v) == 0 else "#4c72b0" for v in g.nodes]
        arrows = {"arrows": True, "arrowsize": 8} if g.is_directed() else {"arrows": False}
        nx.draw_networkx(g, pos, ax=ax, node_color=colour, node_size=180, font_size=7,
                         font_color="white", edge_color="#555555", width=0.8, **arrows)
        ax.set_title(topo.name if topo.static else f"{topo.name}\nstep {t}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """``harness topology ARGV...`` (the same parser, errors and exit statuses)."""
    import sys

    from harness.cli import main as harness_main

    return harness_main(["topology", *(sys.argv[1:] if argv is None else argv)])


def cmd_topology(args) -> int:
    """Print the statistics of ``args.name`` (and draw it with ``--out``); a bad name, parameter
    or count is a ``TopologyError``, one line from ``harness.cli.main``."""
    from harness.cli import did_you_mean

    if args.name not in NAMES:  # plugins register from a config's imports:, not here
        raise TopologyError(f"topology.name: unknown topology {args.name!r}{did_you_mean(args.name, NAMES)} "
                            "(harness list topologies shows them)")
    spec = {"name": args.name, **parse_params(args.param)}
    topo = build(spec, args.n, args.seed)
    if args.steps is not None and args.steps < 1:
        raise TopologyError(f"topology.steps: must be >= 1; got {args.steps}; use e.g. --steps 8")
    f0 = topo.frame(0)
    kind = "static" if topo.static else (f"dynamic, period {topo.period}" if topo.period else "dynamic")
    print(f"topology {topo.name}  n={topo.n}  seed={args.seed}  {kind}  weights={f0.scheme}"
          f"  {'directed' if topo.directed else 'undirected'}")
    if topo.params:
        print(f"params: {topo.params}")
    if topo.static:
        s = summary(topo)
        print(f"degree (in) min/mean/max: {s['deg_min']} / {s['deg_mean']:.2f} / {s['deg_max']}")
        print(f"diameter: {_fmt_diam(s['diameter'])}")
        print(f"SLEM: {s['slem']:.6f}  spectral gap: {s['gap']:.6f}")
        print(f"claims: {', '.join(sorted(f0.claims))}")
        shown = [0]
    else:
        k = args.steps or (topo.period if topo.period and topo.period <= MAX_ROWS else 8)
        print(f"{'step':>5} {'edges':>6}  {'degree min/mean/max':<20} {'diameter':<19} {'SLEM':>9} {'gap':>9}")
        for t in range(min(k, MAX_ROWS)):
            s = summary(topo, t)
            deg = f"{s['deg_min']} / {s['deg_mean']:.2f} / {s['deg_max']}"
            print(f"{t:>5} {s['edges']:>6}  {deg:<20} {_fmt_diam(s['diameter']):<19} "
                  f"{s['slem']:>9.6f} {s['gap']:>9.6f}")
        if k > MAX_ROWS:
            print(f"  ... ({k - MAX_ROWS} more steps)")
        print(f"empirical consensus rate over {k} steps: {consensus_rate(topo, k):.6f}"
              f"  (||(I-J) W({k - 1})...W(0)||_2^(1/{k}))")
        shown = list(range(min(k, MAX_PANELS)))
    if args.out:
        draw(topo, shown, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
