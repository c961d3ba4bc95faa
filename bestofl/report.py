"""The `evaluate` report: report.json (DESIGN.md schema), report.md, accuracy-vs-budget plot."""
from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Any

from bestofl import storage
from bestofl.evaluation import POOLS, Evaluation

PLOT_FILE = "accuracy_vs_budget.png"
_EXACT = {"random": "random", "oracle": "oracle", "rm_best": "rm_best (order statistics)"}


def report_json(ev: Evaluation, cfg: Any) -> dict[str, Any]:
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
    return {"languages": ev.languages, "budgets": ev.budgets, "results": ev.results,
            "config": config}


def _lookup(ev: Evaluation) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    return {(r["target_lang"], r["pool"], r["selector"], r["budget"]): r for r in ev.results}


def _common_budget(ev: Evaluation, t: str) -> int | None:
    """The largest budget both pools of target t report (mono usually runs out first)."""
    common = [k for k in ev.plans[(t, "mono")]["budgets"] if k in ev.plans[(t, "cross")]["budgets"]]
    return max(common, default=None)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report_markdown(ev: Evaluation, cfg: Any) -> str:
    rows = _lookup(ev)
    out = ["# Best-of-L evaluation", "",
           f"Pool: `{cfg.input}`. Targets: {', '.join(ev.languages)}. "
           f"Cross-lingual set L: {', '.join(ev.cross_languages)} "
           f"(allocation: {cfg.allocation}{', calibrated scores' if cfg.calibrate else ''}).",
           "",
           "Accuracy (%) at budget k (responses per question the selector sees) is the "
           "expectation over which k responses are drawn, exact for "
           + (", ".join(_EXACT[s] for s in ev.selectors if s in _EXACT) or "none")
           + f", by Monte Carlo over {cfg.monte_carlo} seeded draws (seed {cfg.seed}) for "
           + (", ".join(s for s in ev.selectors if s not in _EXACT) or "none") + ". Brackets: "
           f"{100 * cfg.confidence:.0f}% bootstrap interval over questions "
           f"({cfg.bootstrap} resamples). *mono*: all k from the target language; "
           f"*cross*: k spread over L.", ""]
    if ev.notices:
        out += ["## Notices", ""] + [f"- {n}" for n in ev.notices] + [""]
    out += ["## Mono vs cross at equal budget", "",
            "The largest budget both pools reach, per target language.", "",
            "| target | k | " + " | ".join(f"{s} mono | {s} cross" for s in ev.selectors) + " |",
            "|---|---|" + "---|---|" * len(ev.selectors)]
    for t in ev.languages:
        k = _common_budget(ev, t)
        if k is None:
            continue
        cells = []
        for s in ev.selectors:
            m, c = rows[(t, "mono", s, k)]["accuracy"], rows[(t, "cross", s, k)]["accuracy"]
            cells += [_pct(m), f"{_pct(c)} ({100 * (c - m):+.1f})"]
        out.append(f"| {t} | {k} | " + " | ".join(cells) + " |")
    out.append("")
    for t in ev.languages:
        n_q = ev.plans[(t, "mono")]["n_questions"]
        out += [f"## Target {t} ({n_q} questions)", "",
                f"The pool holds {ev.plans[(t, 'mono')]['capacity']} responses per question in "
                f"{t} and {ev.plans[(t, 'cross')]['capacity']} across L.", "",
                "| k | " + " | ".join(f"{s} {p}" for s in ev.selectors for p in POOLS) + " |",
                "|---|" + "---|" * (2 * len(ev.selectors))]
        for k in ev.budgets:
            cells = []
            for s in ev.selectors:
                for p in POOLS:
                    r = rows.get((t, p, s, k))
                    cells.append("" if r is None else f"{_pct(r['accuracy'])} "
                                 f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]")
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        alloc = ev.plans[(t, "cross")]["allocation"]
        out += ["", "Cross-lingual draw per budget: " + "; ".join(
            f"k={k}: " + " ".join(f"{lang}:{c}" for lang, c in alloc[k].items())
            for k in ev.budgets if k in alloc and k <= 2 * len(ev.cross_languages)), ""]
    return "\n".join(out)


def plot(ev: Evaluation) -> bytes:
    """One panel per target language; a colour per selector, mono solid, cross dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _lookup(ev)
    n = len(ev.languages)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False,
                             sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, t in zip(axes.ravel(), ev.languages):
        for i, s in enumerate(ev.selectors):
            for p, style in (("mono", "-"), ("cross", "--")):
                pts = [rows[(t, p, s, k)] for k in ev.budgets if (t, p, s, k) in rows]
                if not pts:
                    continue
                ks = [r["budget"] for r in pts]
                ax.plot(ks, [r["accuracy"] for r in pts], style, marker="o", ms=3,
                        color=colours(i), label=f"{s} ({p})")
                ax.fill_between(ks, [r["ci_low"] for r in pts], [r["ci_high"] for r in pts],
                                color=colours(i), alpha=0.08, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_title(f"target {t}")
        ax.set_xlabel("budget k (responses per question)")
        ax.grid(alpha=0.3)
    lows = [r["ci_low"] for r in ev.results] or [0.0]
    axes[0, 0].set_ylim(max(0.0, min(lows) - 0.03), 1.005)  # shared: every panel on one scale
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(6, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 * math.ceil(len(labels) / ncol) / nrows, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(output: str, ev: Evaluation, cfg: Any) -> dict[str, Any]:
    """report.json, report.md and (if cfg.plots) the plot into `output`; returns report.json."""
    report = report_json(ev, cfg)
    storage.write_text(storage.join(output, "report.json"),
                       json.dumps(report, indent=1, default=str) + "\n")
    storage.write_text(storage.join(output, "report.md"), report_markdown(ev, cfg) + "\n")
    if cfg.plots:
        fs, path = storage.filesystem(storage.join(output, PLOT_FILE))
        with fs.open_output_stream(path) as f:
            f.write(plot(ev))
    return report


def summary(ev: Evaluation) -> str:
    """A few lines for the terminal: mono vs cross at the largest common budget."""
    rows = _lookup(ev)
    lines = []
    for t in ev.languages:
        k = _common_budget(ev, t)
        if k is None:
            continue
        parts = [f"{s} {_pct(rows[(t, 'mono', s, k)]['accuracy'])}->"
                 f"{_pct(rows[(t, 'cross', s, k)]['accuracy'])}" for s in ev.selectors]
        lines.append(f"  {t:<4} k={k:<3} mono->cross: " + "  ".join(parts))
    return "accuracy (%) at the largest budget both pools reach:\n" + "\n".join(lines)
