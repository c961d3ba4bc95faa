"""The `evaluate` report: report.json, per_question.parquet, report.md, report.html and the
plots (accuracy vs budget, accuracy vs tokens, paired differences)."""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from typing import Any

import pyarrow.parquet as pq

from bestofl import storage
from bestofl.compare import PER_QUESTION_FILE
from bestofl.evaluation import POOLS, Evaluation, per_question_table, verdict

PLOT_FILE = "accuracy_vs_budget.png"
TOKENS_PLOT_FILE = "accuracy_vs_tokens.png"
FOREST_PLOT_FILE = "differences.png"
_EXACT = {"random": "random", "oracle": "oracle", "rm_best": "rm_best (order statistics)"}


def report_json(ev: Evaluation, cfg: Any) -> dict[str, Any]:
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
    return {"languages": ev.languages, "budgets": ev.budgets, "results": ev.results,
            "differences": ev.differences, "mean_differences": ev.mean_differences,
            "config": config}


def _lookup(ev: Evaluation) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    return {(r["target_lang"], r["pool"], r["selector"], r["budget"]): r for r in ev.results}


def _common_budget(ev: Evaluation, t: str) -> int | None:
    """The largest budget both pools of target t report (mono usually runs out first)."""
    common = [k for k in ev.plans[(t, "mono")].budgets if k in ev.plans[(t, "cross")].budgets]
    return max(common, default=None)


def _diffs(ev: Evaluation) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(d["target_lang"], d["selector"], d["budget"]): d for d in ev.differences}


def _diff_text(d: dict[str, Any]) -> str:
    return f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _method(ev: Evaluation, cfg: Any) -> str:
    """How the numbers were made, in one paragraph."""
    alloc = ("uniform (the target plus partners drawn uniformly at random from L minus "
             "the target, one response each per round)" if cfg.allocation == "uniform" else
             f"round_robin in the fixed order {', '.join(cfg.order)}")
    return (f"Pool: `{cfg.input}`. Targets: {', '.join(ev.languages)}. Cross-lingual set L: "
            f"{', '.join(ev.cross_languages)}; allocation {alloc}"
            f"{'; rm_best ranks by calibrated P(correct)' if cfg.calibrate else ''}. "
            "Accuracy (%) at budget k (responses per question the selector sees) is the "
            "expectation over which k responses are drawn, exact for "
            + (", ".join(_EXACT[s] for s in ev.selectors if s in _EXACT) or "none")
            + f", by Monte Carlo over {cfg.monte_carlo} seeded draws (seed {cfg.seed}) for "
            + (", ".join(s for s in ev.selectors if s not in _EXACT) or "none") + ". "
            f"Statistics fitted on labels (rm_vote's calibration, lang_prior's language "
            f"accuracies) are fitted out of fold ({getattr(cfg, 'folds', 5)} folds over "
            f"questions). Brackets: {100 * cfg.confidence:.0f}% percentile bootstrap intervals "
            f"over questions ({cfg.bootstrap} resamples); differences cross - mono are paired "
            "(the same resampled questions on both arms). *mono*: all k from the target "
            "language; *cross*: k spread over L.")


def _headline(ev: Evaluation) -> list[tuple[str, int, str, dict[str, Any]]]:
    """(target, k, selector, difference) at the largest budget both pools reach."""
    diffs = _diffs(ev)
    out = []
    for t in ev.languages:
        k = _common_budget(ev, t)
        if k is None:
            continue
        out += [(t, k, s, diffs[(t, s, k)]) for s in ev.selectors if (t, s, k) in diffs]
    return out


def report_markdown(ev: Evaluation, cfg: Any) -> str:
    rows = _lookup(ev)
    diffs = _diffs(ev)
    tokens = bool(ev.results) and "tokens" in ev.results[0]
    out = ["# Best-of-L evaluation", "", _method(ev, cfg), ""]
    if ev.notices:
        out += ["## Notices", ""] + [f"- {n}" for n in ev.notices] + [""]
    out += ["## Cross - mono at equal budget (paired)", "",
            "The largest budget both pools reach, per target language: accuracy mono, cross, "
            "and the paired difference in points with its interval; *cross beats mono* only "
            "where the interval excludes 0.", "",
            "| target | k | " + " | ".join(f"{s} mono | {s} cross | {s} cross - mono"
                                          for s in ev.selectors) + " |",
            "|---|---|" + "---|---|---|" * len(ev.selectors)]
    for t in ev.languages:
        k = _common_budget(ev, t)
        if k is None:
            continue
        cells = []
        for s in ev.selectors:
            d = diffs[(t, s, k)]
            cells += [_pct(rows[(t, "mono", s, k)]["accuracy"]),
                      _pct(rows[(t, "cross", s, k)]["accuracy"]),
                      _diff_text(d) + (" **" + verdict(d["ci_low"], d["ci_high"]) + "**"
                                       if d["ci_low"] > 0 or d["ci_high"] < 0 else "")]
        out.append(f"| {t} | {k} | " + " | ".join(cells) + " |")
    out.append("")
    if ev.mean_differences:
        out += ["## Mean over targets of cross - mono (paired)", "",
                "| selector | k | cross - mono (points) | reads |", "|---|---|---|---|"]
        for d in ev.mean_differences:
            out.append(f"| {d['selector']} | {d['budget']} | {_diff_text(d)} | "
                       f"{verdict(d['ci_low'], d['ci_high'])} |")
        out.append("")
    for t in ev.languages:
        mono, cross = ev.plans[(t, "mono")], ev.plans[(t, "cross")]
        out += [f"## Target {t} ({mono.n_questions} questions)", "",
                f"The pool holds {mono.capacity} responses per question in "
                f"{t} and {cross.capacity} across L.", "",
                "| k | " + " | ".join(f"{s} {p}" for s in ev.selectors for p in POOLS)
                + " | " + " | ".join(f"{s} cross - mono" for s in ev.selectors)
                + (" | tokens mono | tokens cross" if tokens else "") + " |",
                "|---|" + "---|" * (3 * len(ev.selectors) + 2 * tokens)]
        for k in ev.budgets:
            cells = []
            for s in ev.selectors:
                for p in POOLS:
                    r = rows.get((t, p, s, k))
                    cells.append("" if r is None else f"{_pct(r['accuracy'])} "
                                 f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]")
            cells += [_diff_text(diffs[(t, s, k)]) if (t, s, k) in diffs else ""
                      for s in ev.selectors]
            if tokens:
                cells += [f"{rows[(t, p, ev.selectors[0], k)]['tokens']:.0f}"
                          if (t, p, ev.selectors[0], k) in rows else "" for p in POOLS]
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        out += ["", "Cross-lingual draw per budget: " + "; ".join(
            f"k={k}: {cross.describe(k)}" for k in cross.budgets
            if k <= 2 * len(ev.cross_languages)), ""]
    return "\n".join(out)


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def plot(ev: Evaluation, x: str = "budget") -> bytes:
    """One panel per target language; a colour per selector, mono solid, cross dashed.
    x: "budget" (responses per question) or "tokens" (expected generated tokens)."""
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
                xs = [r["tokens" if x == "tokens" else "budget"] for r in pts]
                ax.plot(xs, [r["accuracy"] for r in pts], style, marker="o", ms=3,
                        color=colours(i), label=f"{s} ({p})")
                ax.fill_between(xs, [r["ci_low"] for r in pts], [r["ci_high"] for r in pts],
                                color=colours(i), alpha=0.08, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_title(f"target {t}")
        ax.set_xlabel("expected generated tokens per question" if x == "tokens"
                      else "budget k (responses per question)")
        ax.grid(alpha=0.3)
    lows = [r["ci_low"] for r in ev.results] or [0.0]
    axes[0, 0].set_ylim(max(0.0, min(lows) - 0.03), 1.005)  # shared: every panel on one scale
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(6, max(1, len(labels)))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 * math.ceil(len(labels) / ncol) / nrows, 1, 1))
    return _figure_png(fig)


def forest_plot(ev: Evaluation) -> bytes:
    """Paired differences cross - mono with intervals: per selector, every target at the
    largest budget both pools reach, plus the mean over targets at the same budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = _headline(ev)
    means = {(d["selector"], d["budget"]): d for d in ev.mean_differences}
    lines = []  # (label, diff dict, is_mean)
    for s in ev.selectors:
        picked = [(t, k, d) for t, k, sel, d in head if sel == s]
        lines += [(f"{s}  {t} (k={k})", d, False) for t, k, d in picked]
        ks = {k for _, k, _ in picked}
        if len(ks) == 1 and (s, ks.pop()) in means:
            d = means[(s, picked[0][1])]
            lines.append((f"{s}  mean (k={d['budget']})", d, True))
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(lines) + 1.2))
    for y, (label, d, is_mean) in enumerate(reversed(lines)):
        colour = "tab:green" if d["ci_low"] > 0 else "tab:red" if d["ci_high"] < 0 else "grey"
        ax.errorbar(100 * d["diff"], y, xerr=[[100 * (d["diff"] - d["ci_low"])],
                                              [100 * (d["ci_high"] - d["diff"])]],
                    fmt="D" if is_mean else "o", color=colour, ms=5 if is_mean else 3,
                    capsize=2)
    ax.set_yticks(range(len(lines)), [label for label, _, _ in reversed(lines)], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("cross - mono, accuracy points (paired bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def _table_html(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def report_html(ev: Evaluation, cfg: Any, images: dict[str, bytes]) -> str:
    """One self-contained page: method, notices, paired differences (table and forest
    plot), the accuracy plots and one panel per target language with its full table."""
    rows = _lookup(ev)
    diffs = _diffs(ev)

    def img(name: str, alt: str) -> str:
        if name not in images:
            return ""
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    def diff_cell(d: dict[str, Any]) -> str:
        cls = "up" if d["ci_low"] > 0 else "down" if d["ci_high"] < 0 else ""
        return f'<span class="{cls}">{html.escape(_diff_text(d))}</span>'

    parts = [f"<h1>Best-of-L evaluation</h1><p>{html.escape(_method(ev, cfg))}</p>"]
    if ev.notices:
        parts.append("<h2>Notices</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                      for n in ev.notices) + "</ul>")
    head = _headline(ev)
    parts.append("<h2>Cross - mono at equal budget (paired)</h2>"
                 "<p>Green: cross beats mono (the interval excludes 0); red: mono beats cross.</p>")
    parts.append(_table_html(
        ["target", "k", "selector", "mono", "cross", "cross - mono", "reads"],
        [[html.escape(t), str(k), html.escape(s), _pct(rows[(t, "mono", s, k)]["accuracy"]),
          _pct(rows[(t, "cross", s, k)]["accuracy"]), diff_cell(d),
          verdict(d["ci_low"], d["ci_high"])] for t, k, s, d in head]))
    if ev.mean_differences:
        parts.append("<h3>Mean over targets</h3>" + _table_html(
            ["selector", "k", "cross - mono", "reads"],
            [[html.escape(d["selector"]), str(d["budget"]), diff_cell(d),
              verdict(d["ci_low"], d["ci_high"])] for d in ev.mean_differences]))
    parts.append(img(FOREST_PLOT_FILE, "paired differences, forest plot"))
    parts.append("<h2>Accuracy vs budget</h2>" + img(PLOT_FILE, "accuracy vs budget"))
    parts.append(img(TOKENS_PLOT_FILE, "accuracy vs tokens"))
    parts.append("<h2>Per target language</h2>")
    for t in ev.languages:
        mono, cross = ev.plans[(t, "mono")], ev.plans[(t, "cross")]
        body = []
        for k in ev.budgets:
            cells = [str(k)]
            for s in ev.selectors:
                for p in POOLS:
                    r = rows.get((t, p, s, k))
                    cells.append("" if r is None else f"{_pct(r['accuracy'])} "
                                 f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]")
                cells.append(diff_cell(diffs[(t, s, k)]) if (t, s, k) in diffs else "")
            body.append(cells)
        header = ["k"] + [f"{s} {p}" for s in ev.selectors for p in (*POOLS, "cross - mono")]
        parts.append(f'<section class="panel"><h3>Target {html.escape(t)} '
                     f"({mono.n_questions} questions; {mono.capacity} responses in {t}, "
                     f"{cross.capacity} across L)</h3>" + _table_html(header, body) + "</section>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             "th{background:#f0f0f0}.up{color:#1a7f37;font-weight:bold}"
             ".down{color:#cf222e;font-weight:bold}img{max-width:100%;display:block;margin:1em 0}"
             ".panel{overflow-x:auto}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Best-of-L evaluation</title><style>{style}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


def write_report(output: str, ev: Evaluation, cfg: Any) -> dict[str, Any]:
    """report.json, per_question.parquet, report.md, report.html and (if cfg.plots) the
    plots into `output`; returns report.json."""
    report = report_json(ev, cfg)
    storage.write_text(storage.join(output, "report.json"),
                       json.dumps(report, indent=1, default=str) + "\n")
    fs, path = storage.filesystem(storage.join(output, PER_QUESTION_FILE))
    pq.write_table(per_question_table(ev), path, filesystem=fs)
    storage.write_text(storage.join(output, "report.md"), report_markdown(ev, cfg) + "\n")
    images: dict[str, bytes] = {}
    if cfg.plots:
        images[PLOT_FILE] = plot(ev)
        if getattr(cfg, "budget_unit", "responses") == "tokens":
            images[TOKENS_PLOT_FILE] = plot(ev, "tokens")
        if ev.differences:
            images[FOREST_PLOT_FILE] = forest_plot(ev)
        for name, data in images.items():
            fs, path = storage.filesystem(storage.join(output, name))
            with fs.open_output_stream(path) as f:
                f.write(data)
    storage.write_text(storage.join(output, "report.html"), report_html(ev, cfg, images) + "\n")
    return report


def summary(ev: Evaluation) -> str:
    """A few lines for the terminal: cross - mono at the largest common budget, paired."""
    lines = []
    for t in ev.languages:
        k = _common_budget(ev, t)
        if k is None:
            continue
        parts = [f"{s} {_diff_text(d)}" for tt, kk, s, d in _headline(ev) if tt == t]
        lines.append(f"  {t:<4} k={k:<3} " + "  ".join(parts))
    out = ["cross - mono (points, paired interval) at the largest budget both pools reach:"]
    out += lines
    if ev.mean_differences:
        out.append("mean over targets (budgets where the paired interval excludes 0):")
    for sel in ev.selectors:
        mine = [d for d in ev.mean_differences if d["selector"] == sel]
        if not mine:
            continue
        wins = ",".join(str(d["budget"]) for d in mine if d["ci_low"] > 0) or "none"
        losses = ",".join(str(d["budget"]) for d in mine if d["ci_high"] < 0) or "none"
        out.append(f"  {sel:<11} cross beats mono at k={wins}; mono beats cross at k={losses}")
    return "\n".join(out)
