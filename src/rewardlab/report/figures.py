"""Figures of the report, drawn with matplotlib's Agg canvas and returned as PNG data URIs.

No pyplot (no global figure state, no backend switch); every function takes plain numbers, already
pulled out of results.json or an artifact table, and returns `data:image/png;base64,...` so the page
embeds its images and works offline.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Sequence

from matplotlib.figure import Figure

POST, BASE, RANDOM = "#1f6feb", "#d1242f", "#8c959f"


def to_data_uri(fig: Figure) -> str:
    """Render `fig` as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_data_uri(data: bytes) -> str:
    """A PNG artifact (raw bytes) as a data URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _finite(xs: Sequence[float | None]) -> list[float]:
    return [x if x is not None and math.isfinite(x) else math.nan for x in xs]


def training_curves(
    phases: Sequence[float], reward: Sequence[float | None], reward_std: Sequence[float | None] | None,
    kl: Sequence[float | None],
) -> str:
    """Mean reward (with a +-1 std band when given) and exact KL(policy || base) per PPO phase."""
    fig = Figure(figsize=(9, 3.2))
    ax_r, ax_kl = fig.subplots(1, 2)
    reward = _finite(reward)
    ax_r.plot(phases, reward, color=POST, marker=".")
    if reward_std is not None:
        std = _finite(reward_std)
        ax_r.fill_between(phases, [r - s for r, s in zip(reward, std)], [r + s for r, s in zip(reward, std)],
                          color=POST, alpha=0.15, linewidth=0, label="±1 std")
        ax_r.legend(loc="best", fontsize=8)
    ax_r.set(xlabel="phase", ylabel="true reward (mean)", title="Reward")
    ax_kl.plot(phases, _finite(kl), color=BASE, marker=".")
    ax_kl.set(xlabel="phase", ylabel="exact KL (nats / completion)", title="KL to the base model")
    for ax in (ax_r, ax_kl):
        ax.grid(alpha=0.3)
    return to_data_uri(fig)


def frontier(
    kl: Sequence[float], reward: Sequence[float], reward_err: Sequence[tuple[float, float]] | None,
    labels: Sequence[str],
) -> str:
    """Reward-KL frontier: one point per run of a sweep, true reward against exact KL, labelled."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    order = sorted(range(len(kl)), key=lambda i: kl[i])
    ax.plot([kl[i] for i in order], [reward[i] for i in order], color=RANDOM, linewidth=1, zorder=1)
    yerr = None
    if reward_err is not None:
        yerr = [[max(reward[i] - reward_err[i][0], 0) for i in range(len(kl))],
                [max(reward_err[i][1] - reward[i], 0) for i in range(len(kl))]]
    ax.errorbar(kl, reward, yerr=yerr, fmt="o", color=POST, capsize=3, zorder=2)
    for x, y, label in zip(kl, reward, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xlabel="exact KL to base (nats / completion)", ylabel="true reward (mean)", title="Reward-KL frontier")
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def split_site(site: str, layer: int | None) -> tuple[int | None, str]:
    """('blocks.3.hook_resid_post', None) -> (3, 'hook_resid_post'); other sites keep their name."""
    m = _SITE.match(site)
    if m and layer is None:
        return int(m.group(1)), m.group(2)
    return layer, (m.group(2) if m else site)


def probe_heatmaps(cells: Sequence[tuple[str, int | None, str, float | None]], metric: str) -> str:
    """One heatmap per model: layer (rows) x site/position (columns), colour = probe score.

    `cells` are (model, layer, column label, score); a layer of None (e.g. `ln_final.hook_normalized`)
    is drawn as a final row "final".
    """
    models = list(dict.fromkeys(c[0] for c in cells))
    fig = Figure(figsize=(min(4.2 * len(models), 14), 0.5 + 0.35 * max(4, len({c[1] for c in cells})) + 1.2))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    scores = [c[3] for c in cells if c[3] is not None and math.isfinite(c[3])]
    vmin, vmax = (min(scores + [0.0]), max(scores + [1.0])) if scores else (0.0, 1.0)
    image = None
    for ax, model in zip(axes, models):
        mine = [c for c in cells if c[0] == model]
        layers = sorted({c[1] for c in mine}, key=lambda v: (v is None, v if v is not None else 0))
        columns = list(dict.fromkeys(c[2] for c in mine))
        grid = [[math.nan] * len(columns) for _ in layers]
        for _, layer, column, score in mine:
            grid[layers.index(layer)][columns.index(column)] = math.nan if score is None else score
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), ["final" if v is None else str(v) for v in layers], fontsize=8)
        ax.set(ylabel="layer", title=model)
        if len(layers) * len(columns) <= 120:
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if math.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if v < (vmin + vmax) / 2 else "black")
    fig.colorbar(image, ax=list(axes), label=metric, shrink=0.9)
    return to_data_uri(fig)


def dose_response(
    directions: dict[str, tuple[Sequence[float], Sequence[float], Sequence[tuple[float, float]] | None]],
    random_band: tuple[float, Sequence[float]] | None, random_curves: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> str:
    """Mean reward against steering strength along each direction, with random-direction controls.

    `directions`: name -> (alphas, mean reward, its CIs or None). `random_band` = (baseline reward,
    half-width per alpha of the first direction): the largest absolute effect any random direction
    of the same norm had, shaded around the unsteered reward. `random_curves` are the individual
    random directions' (alphas, rewards), drawn thin and grey.
    """
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for i, (xs, ys) in enumerate(random_curves):
        ax.plot(xs, _finite(ys), color=RANDOM, linewidth=0.8, alpha=0.6, label="random directions" if i == 0 else None)
    if random_band is not None:
        base, half = random_band
        xs = next(iter(directions.values()))[0]
        ax.fill_between(xs, [base - h for h in half], [base + h for h in half], color=RANDOM, alpha=0.25,
                        linewidth=0, label="largest random effect")
    for k, (name, (alphas, reward, reward_ci)) in enumerate(directions.items()):
        yerr = None
        if reward_ci is not None:
            yerr = [[max(r - lo, 0) for r, (lo, _) in zip(reward, reward_ci)],
                    [max(hi - r, 0) for r, (_, hi) in zip(reward, reward_ci)]]
        ax.errorbar(alphas, reward, yerr=yerr, fmt="-o", color=POST if k == 0 else f"C{k + 1}", capsize=3,
                    label=f"{name} direction")
    ax.set(xlabel="steering strength α", ylabel="true reward (mean)", title="Steering dose-response")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return to_data_uri(fig)


def divergent_by_alpha(
    alphas: Sequence[float], reward: Sequence[float | None], grammatical: Sequence[float | None] | None,
) -> str:
    """True reward (and grammatical rate, right axis) of amplified samples against alpha."""
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    ax.plot(alphas, _finite(reward), "-o", color=POST, label="true reward")
    ax.set(xlabel="amplification α (0 = post model)", ylabel="true reward (mean)", title="Divergent sampling")
    ax.grid(alpha=0.3)
    if grammatical is not None:
        ax2 = ax.twinx()
        ax2.plot(alphas, _finite(grammatical), "--s", color=BASE, label="grammatical rate")
        ax2.set(ylabel="grammatical rate", ylim=(-0.05, 1.05))
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    return to_data_uri(fig)


def crosscoder_norms(relative_norms: Sequence[float]) -> str:
    """Histogram of latents' relative decoder norm, with the post-only / shared / base-only cut-offs."""
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    ax.hist(relative_norms, bins=40, range=(0, 1), color=POST)
    for x in (0.1, 0.4, 0.6, 0.9):
        ax.axvline(x, color=RANDOM, linestyle="--", linewidth=0.8)
    ax.set(xlabel="relative decoder norm (0 = post-only, 1 = base-only)", ylabel="latents",
           title="Crosscoder latents")
    return to_data_uri(fig)


def param_divergence(labels: Sequence[str], values: Sequence[float]) -> str:
    """Bar chart of the parameter change (base -> post) per layer."""
    fig = Figure(figsize=(max(4.0, 0.45 * len(labels) + 1.5), 3.2))
    ax = fig.subplots()
    ax.bar(range(len(labels)), values, color=POST)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, fontsize=8)
    ax.set(xlabel="layer", ylabel="‖θ_post − θ_base‖", title="Parameter divergence")
    ax.grid(alpha=0.3, axis="y")
    return to_data_uri(fig)
