"""``pgrad report RUN_DIR``: plots of a run over env steps (``pgrad compare`` is ``pgrad.monitor.compare``).

The report is one HTML file that needs no network (every image is embedded as base64 PNG) plus
the PNGs themselves: return (training episodes and evaluations), approx KL, clip fraction, entropy,
explained variance, gradient norm, value loss, learning rate and steps/s. Guard events are marked
on every panel: critical alerts (red), recoveries (magenta), drills (blue, dashed), halts (black);
warnings as small orange ticks along the bottom. The plotting functions return what they drew
(``PanelData``), read back from the matplotlib artists, so tests check the figure, not a file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgrad import safe_io
from pgrad.checkpoint import inside_run
from pgrad.config import load_yaml
from pgrad.errors import PgradError
from pgrad.monitor.doctor import diagnose, format_report, load_run, step_unit

# (file name, title, metric keys drawn on the panel)
PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("return", "episode return", ("rollout/return_mean", "eval/return_mean")),
    ("approx_kl", "approx KL", ("diagnostics/approx_kl",)),
    ("clip_fraction", "clip fraction", ("diagnostics/clip_fraction",)),
    ("entropy", "entropy", ("diagnostics/entropy",)),
    ("explained_variance", "explained variance", ("diagnostics/explained_variance",)),
    ("grad_norm", "gradient norm (before clipping)", ("diagnostics/grad_norm",)),
    ("value_loss", "value loss", ("train/value_loss",)),
    ("learning_rate", "learning rate", ("train/learning_rate",)),
    ("steps_per_second", "steps per second", ("perf/steps_per_second",)),
)
# DDPG, TD3 and SAC (a run whose rows carry Q statistics): the replay learner's own diagnostics
OFF_POLICY_PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("return", "episode return", ("rollout/return_mean", "eval/return_mean")),
    ("q_values", "Q (first critic, sampled batch)", ("q/mean", "q/min", "q/max")),
    ("td_error", "mean |TD error|", ("q/td_error",)),
    ("critic_loss", "critic loss", ("train/critic_loss",)),
    ("actor_loss", "actor loss", ("train/actor_loss",)),
    ("grad_norm", "gradient norms", ("diagnostics/actor_grad_norm", "diagnostics/critic_grad_norm")),
    ("alpha", "entropy temperature alpha (SAC)", ("train/alpha",)),
    ("entropy", "entropy estimate E[-log pi] (SAC)", ("train/entropy",)),
    ("steps_per_second", "steps per second", ("perf/steps_per_second",)),
)
# PPO, RLOO and GRPO on a language model (rows with ``lm/kl``): the scores, the KL to the reference, the length
LM_PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("true_score", "true score (hidden objective)", ("lm/true_score", "eval/true_score")),
    ("rm_score", "reward-model score", ("lm/rm_score", "eval/rm_score")),
    ("kl_reference", "KL to the reference (nats per response)", ("lm/kl", "eval/kl")),
    ("response_length", "response length (tokens)", ("lm/response_length", "eval/response_length")),
    ("kl_coef", "KL coefficient beta", ("lm/kl_coef",)),
    ("approx_kl", "approx KL per update", ("diagnostics/approx_kl",)),
    ("clip_fraction", "clip fraction", ("diagnostics/clip_fraction",)),
    ("losses", "losses", ("train/policy_loss", "train/value_loss", "train/kl_loss")),
    ("grad_norm", "gradient norm (before clipping)", ("diagnostics/grad_norm",)),
)
# SFT, reward model and DPO (rows of held-out metrics): what each trains and what its policy samples
LM_ROW_PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("true_score", "true score (held-out prompts)", ("eval/true_score",)),
    ("kl_reference", "KL to the reference (nats per response)", ("eval/kl",)),
    ("response_length", "response length (tokens)", ("eval/response_length",)),
    ("train_loss", "training loss", ("train/sft_nll", "train/rm_loss", "train/dpo_loss")),
    ("heldout_loss", "held-out loss", ("eval/sft_nll", "eval/rm_loss", "eval/dpo_loss")),
    ("heldout_accuracy", "held-out preference accuracy", ("eval/rm_accuracy", "eval/dpo_accuracy")),
)
LOG_PANELS = ("approx_kl", "grad_norm", "value_loss", "learning_rate", "td_error", "critic_loss", "alpha")


def panels_for(history: list[dict[str, Any]], unit: str = "env steps") -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """The off-policy panels for a run that logged Q statistics, the language-model ones for an LM run (``unit``
    not env steps), else the on-policy ones."""
    if any("lm/kl" in row for row in history):
        return LM_PANELS
    if unit != "env steps":
        return LM_ROW_PANELS
    return OFF_POLICY_PANELS if any("q/mean" in row for row in history) else PANELS


MARKER_STYLES = {  # event kind prefix -> (colour, line style)
    "critical.": ("tab:red", "-"),
    "recovery.": ("magenta", "-"),
    "drill.": ("tab:blue", "--"),
}


@dataclass
class PanelData:
    """What one report panel draws: its series, its event markers and its warning ticks (for tests)."""

    name: str
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # label -> (steps, values)
    markers: list[tuple[float, str]] = field(default_factory=list)  # (step, event kind) drawn as vertical lines
    warnings: list[float] = field(default_factory=list)  # steps of warning ticks


def metric_series(history: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of every update that logged ``key`` (non-finite values kept as NaN)."""
    steps, vals = [], []
    for m in history:
        if key in m:
            try:
                vals.append(float(m[key]))
            except (TypeError, ValueError):
                vals.append(np.nan)
            steps.append(float(m["step"]))
    return np.asarray(steps), np.asarray(vals)


def marker_kind(kind: str) -> str | None:
    """The marker style an event kind is drawn with (critical, recovery, drill), or None for none."""
    return next((prefix for prefix in MARKER_STYLES if kind.startswith(prefix)), None)


def draw_panel(
    ax: Any,
    name: str,
    title: str,
    keys: tuple[str, ...],
    history: list[dict[str, Any]],
    events: list[dict[str, Any]],
    unit: str = "env steps",
) -> PanelData:
    """Draw one panel; return what was drawn, read back from the axes."""
    for key in keys:
        steps, vals = metric_series(history, key)
        if steps.size:
            style = "o-" if key.startswith("eval/") else "-"
            ax.plot(steps, vals, style, label=key, markersize=3, linewidth=1.2)
    for event in events:
        prefix = marker_kind(str(event.get("kind", "")))
        if prefix is not None:
            colour, linestyle = MARKER_STYLES[prefix]
            ax.axvline(
                float(event["step"]),
                color=colour,
                linestyle=linestyle,
                linewidth=1.0,
                alpha=0.8,
                label=f"_event:{event['kind']}",
            )
    warning_steps = [float(e["step"]) for e in events if str(e.get("kind", "")).startswith("warning.")]
    if warning_steps:
        ax.plot(
            warning_steps,
            np.zeros(len(warning_steps)),
            "|",
            color="orange",
            markersize=8,
            transform=ax.get_xaxis_transform(),
            label="_warnings",
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(keys) > 1 and ax.get_legend_handles_labels()[0]:  # no lines (no rows logged): no legend, no warning
        ax.legend(fontsize=7)
    data = read_panel(ax, name)
    if name in LOG_PANELS and data.series:
        plotted = np.concatenate([y for _, y in data.series.values()])
        plotted = plotted[np.isfinite(plotted)]
        if plotted.size and (plotted > 0).all():
            ax.set_yscale("log")
    return data


def read_panel(ax: Any, name: str) -> PanelData:
    """Read back what a drawn panel holds (series, markers, warnings): the report tests' view of a plot."""
    data = PanelData(name)
    for line in ax.lines:
        label = str(line.get_label())
        if label.startswith("_event:"):
            data.markers.append((float(np.asarray(line.get_xdata())[0]), label[len("_event:") :]))
        elif label == "_warnings":
            data.warnings = [float(x) for x in line.get_xdata()]
        elif not label.startswith("_"):
            data.series[label] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
    return data


def _figure_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def plain_text(text: str) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` pair is mathtext to matplotlib, and a run folder's name
    or a received config's values with ``$\\frac{`` in them would stop the plot with a parse error."""
    return text.replace("$", r"\$")


def plot_run(
    history: list[dict[str, Any]], events: list[dict[str, Any]], out_dir: Path, label: str, unit: str = "env steps"
) -> tuple[list[PanelData], dict[str, bytes]]:
    """One PNG per panel plus ``overview.png`` (all panels), written to ``out_dir``; ``unit``: what a step counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = panels_for(history, unit)
    for name in ("overview", *(name for name, _, _ in chosen)):  # a planted link: refused before anything is drawn
        safe_io.refuse_link(out_dir / f"{name}.png")
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    panels = []
    grid_rows = (len(chosen) + 2) // 3
    overview, axes = plt.subplots(grid_rows, 3, figsize=(15, 10 * grid_rows / 3))
    for (name, title, keys), overview_ax in zip(chosen, axes.flat, strict=True):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        panels.append(draw_panel(ax, name, title, keys, history, events, unit))
        draw_panel(overview_ax, name, title, keys, history, events, unit)
        images[name] = _figure_png(fig)
        plt.close(fig)
    overview.suptitle(
        f"{plain_text(label)}  (red: critical alert, magenta: recovery, blue dashed: drill, orange ticks: warnings)",
        fontsize=10,
    )
    overview.tight_layout()
    images["overview"] = _figure_png(overview)
    plt.close(overview)
    for name, png in images.items():
        safe_io.write_atomic(out_dir / f"{name}.png", png)
    return panels, images


# The page may make no network request at all: everything it shows is inline (PNGs as data: URIs), and the
# policy tells the browser to refuse anything else. Its one script checks that every panel decoded.
CONTENT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
PANEL_CHECK = (
    "addEventListener('securitypolicyviolation',()=>{document.body.dataset.blocked=+(document.body.dataset.blocked||0)+1});"
    "addEventListener('load',()=>{const all=[...document.images];"
    "const bad=all.filter(i=>!(i.complete&&i.naturalWidth>0));"
    "bad.forEach(i=>i.insertAdjacentText('afterend',' (this panel could not be shown)'));"
    "document.body.dataset.panels=(all.length-bad.length)+'/'+all.length;"
    "document.body.dataset.blocked=document.body.dataset.blocked||'0'})"
)


def table(rows: Sequence[tuple[str, str]]) -> str:
    """Two-column HTML rows, every value escaped."""
    return "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(value)}</td></tr>" for key, value in rows)


def summary_rows(history: list[dict[str, Any]], events: list[dict[str, Any]], unit: str) -> list[tuple[str, str]]:
    """The run's numbers at a glance: how far it got, how long it took, how it scored, what the guard did."""
    last = history[-1] if history else {}
    rows = [(unit, f"{int(last.get('step', 0)):,}"), ("updates", f"{len(history):,}")]
    numbers = [
        ("perf/wall_seconds", "wall time (s)", "{:,.1f}"),
        ("rollout/return_mean", "return (last episodes, mean)", "{:.4g}"),
        ("lm/rm_score", "reward score (last update)", "{:.4g}"),
    ]
    rows += [(label, form.format(last[key])) for key, label, form in numbers if isinstance(last.get(key), int | float)]
    evaluations = [row["eval/return_mean"] for row in history if isinstance(row.get("eval/return_mean"), int | float)]
    if evaluations:
        rows += [("evaluation return (last, best)", f"{evaluations[-1]:.4g}, {max(evaluations):.4g}")]
    kinds = [str(event.get("kind", "")).split(".")[0] for event in events]
    rows.append(("guard", ", ".join(f"{kinds.count(k)} {k}" for k in ("critical", "warning", "recovery", "drill"))))
    return rows


def config_rows(config: Any, prefix: str = "") -> list[tuple[str, str]]:
    """config.yaml flattened to ``section.field`` rows (the run's record of what it trained with)."""
    if not isinstance(config, dict):
        return [(prefix.rstrip(".") or "config", json.dumps(config, default=str))]
    rows: list[tuple[str, str]] = []
    for key, value in config.items():
        rows += config_rows(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", str(value))]
    return rows


def render_html(
    title: str,
    images: dict[str, bytes],
    doctor_text: str,
    events: list[dict[str, Any]],
    summary: Sequence[tuple[str, str]] = (),
    config: Sequence[tuple[str, str]] = (),
) -> str:
    """The self-contained report page: summary numbers, embedded PNGs, the doctor's text, the events and the
    config, every value escaped; no network request (``CONTENT_POLICY``)."""

    def img(name: str) -> str:
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'

    # Every value from the run folder is escaped: events.jsonl may come from someone else.
    rows = "".join(
        f"<tr><td>{html.escape(str(e.get('step')))}</td><td>{html.escape(str(e.get('kind')))}</td>"
        f"<td>{html.escape(str(e.get('message')))}</td></tr>"
        for e in events
        if str(e.get("kind", "")).split(".")[0] in ("critical", "recovery", "drill", "warning")
    )
    panels = "".join(f"<h3>{html.escape(name)}</h3>{img(name)}" for name in images if name != "overview")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">'
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "img{max-width:100%}td{padding:2px 8px;vertical-align:top;font-size:90%}pre{background:#f4f4f4;padding:1em}"
        f"</style><script>{PANEL_CHECK}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><table class='summary'>{table(summary)}</table>{img('overview')}"
        f"<h2>doctor</h2><pre>{html.escape(doctor_text)}</pre>"
        f"<h2>guard events</h2><table><tr><th>step</th><th>kind</th><th>message</th></tr>{rows}</table>"
        f"<h2>panels</h2>{panels}"
        f"<h2>config</h2><table class='config'>{table(config)}</table></body></html>"
    )


def report(run_dir: Path, out_dir: Path | None = None) -> tuple[Path, list[PanelData]]:
    """Write ``report.html`` and the PNGs (default: ``RUN_DIR/report``); returns the HTML path and panels."""
    run_dir = Path(run_dir)
    # The default output folder is inside the run; a 'report' symlink there must not send the
    # files somewhere else (an --out the user gives is theirs to choose).
    out_dir = Path(out_dir) if out_dir is not None else inside_run(run_dir, "report", "the report folder")
    history, events, config = load_run(run_dir)  # checks every entry of the folder (check_run_folder)
    unit = step_unit(run_dir)
    path = out_dir / "report.html"
    safe_io.refuse_link(path)  # before any PNG is written
    panels, images = plot_run(history, events, out_dir, f"pgrad run {run_dir.name}", unit)
    findings = diagnose(history, events, config)
    doctor_text = format_report(run_dir, history, findings, events, unit)
    try:
        saved = config_rows(load_yaml(run_dir / "config.yaml"))
    except PgradError as exc:
        saved = [("config.yaml", f"unreadable: {exc}")]
    page = render_html(
        f"pgrad report: {run_dir}", images, doctor_text, events, summary_rows(history, events, unit), saved
    )
    safe_io.write_atomic(path, page)
    return path, panels
