"""Every figure rewardlab draws, with matplotlib's Agg canvas, returned as PNG data URIs.

The one plotting layer: the report embeds these figures, and the stages and the CLI write them as
PNG files with `save_png`; the method modules return data only. No pyplot (no global figure state,
no backend switch); every function takes plain numbers, already pulled out of results.json or an
artifact table, and returns `data:image/png;base64,...` so the page embeds its images and works
offline.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from rewardlab.io import atomic_path

POST, BASE, RANDOM = "#1f6feb", "#d1242f", "#8c959f"
OPTIMUM = "#1a7f37"  # the reward's KL-optimal curve
PNG_URI_PREFIX = "data:image/png;base64,"


def png_file_data_uri(data: bytes) -> str:
    """A PNG artifact (raw bytes) as a data URI."""
    return PNG_URI_PREFIX + base64.b64encode(data).decode("ascii")


def to_data_uri(fig: Figure) -> str:
    """Render `fig` as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return png_file_data_uri(buf.getvalue())


def save_png(uri: str, path: str | Path) -> None:
    """Write a figure of this module (its PNG data URI) to `path` as a PNG file, atomically."""
    if not uri.startswith(PNG_URI_PREFIX):
        raise ValueError("not a PNG data URI")
    with atomic_path(path) as tmp:
        tmp.write_bytes(base64.b64decode(uri[len(PNG_URI_PREFIX):]))


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
    labels: Sequence[str], reward_base: float | None = None,
    optimum: tuple[Sequence[float], Sequence[float]] | None = None,
) -> str:
    """Reward-KL frontier: one point per run of a sweep, true reward (with its 95% CI) against exact
    KL to the base model, labelled; `reward_base`, the base model's mean reward, as a dashed line;
    `optimum` (KLs, rewards), the reward's KL-optimal policies, as a line."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    order = sorted(range(len(kl)), key=lambda i: kl[i])
    ax.plot([kl[i] for i in order], [reward[i] for i in order], color=RANDOM, linewidth=1, zorder=1)
    yerr = None
    if reward_err is not None:
        yerr = [[max(reward[i] - reward_err[i][0], 0) for i in range(len(kl))],
                [max(reward_err[i][1] - reward[i], 0) for i in range(len(kl))]]
    ax.errorbar(kl, reward, yerr=yerr, fmt="o", color=POST, capsize=3, zorder=2, label="policy")
    for x, y, label in zip(kl, reward, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if optimum is not None:
        order_opt = sorted(range(len(optimum[0])), key=lambda i: optimum[0][i])
        ax.plot([optimum[0][i] for i in order_opt], [optimum[1][i] for i in order_opt], color=OPTIMUM, linewidth=1.5,
                zorder=1, label="KL-optimal (base tilted by exp(r / beta))")
    if reward_base is not None:
        ax.axhline(reward_base, color=BASE, linestyle="--", linewidth=1, label="base model")
    if reward_base is not None or optimum is not None:
        ax.legend(loc="best", fontsize=8)
    ax.set(xlabel="exact KL to base (nats / completion)", ylabel="true reward (mean, 95% CI)",
           title="Reward-KL frontier")
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def probe_heatmap(cells: Sequence[Mapping[str, Any]], title: str, value: str = "val_spearman") -> str:
    """A probe sweep of one model: one panel per token position, site kind (rows) x layer (columns),
    each cell coloured and labelled by its `value` (default the validation Spearman) on -1..1.

    `cells` are the sweep's cells (`probes.sweep`, as in sweep.json): mappings with kind, layer
    (-1 outside the blocks), position and `value`; the final norm (kind `ln_final`) is the last
    column, "final". A missing or undefined score is left blank.
    """
    positions = list(dict.fromkeys(str(c["position"]) for c in cells))
    kinds = list(dict.fromkeys(c["kind"] for c in cells))
    layers = sorted({c["layer"] for c in cells if c["layer"] >= 0})
    columns = [str(layer) for layer in layers] + (["final"] if "ln_final" in kinds else [])
    fig = Figure(figsize=(1.5 + len(positions) * (0.6 + 0.45 * len(columns)), 1.3 + 0.4 * len(kinds)),
                 layout="constrained")
    axes = fig.subplots(1, len(positions), squeeze=False)[0]
    image = None
    for ax, position in zip(axes, positions):
        grid = [[math.nan] * len(columns) for _ in kinds]
        for c in cells:
            if str(c["position"]) == position:
                column = columns.index("final") if c["kind"] == "ln_final" else layers.index(c["layer"])
                grid[kinds.index(c["kind"])][column] = _finite([c[value]])[0]
        image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(kinds)), kinds if ax is axes[0] else [])
        ax.set_xlabel("layer")
        ax.set_title(position, fontsize=9)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label=value)
    fig.suptitle(title, fontsize=10)
    return to_data_uri(fig)


def dose_response(
    alphas: Sequence[float], directions: Mapping[str, tuple[Sequence[float], Sequence[tuple[float, float]] | None]],
    random_effects: Sequence[Sequence[float]], site: str,
) -> str:
    """Mean true reward against steering strength along each direction, with random-direction controls.

    `directions`: name -> (mean reward per alpha, its CIs or None), in the order of `alphas` (which
    include 0, the unsteered reward that all directions share). `random_effects`: per random
    direction of the same norm, its mean effect on the reward per alpha; each is drawn thin and grey
    around the unsteered reward, and the largest absolute effect of any of them per alpha is shaded.
    """
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    xs = [alphas[i] for i in order]
    unsteered = next(iter(directions.values()))[0][min(range(len(alphas)), key=lambda i: abs(alphas[i]))]
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for k, effects in enumerate(random_effects):
        ax.plot(xs, _finite([unsteered + effects[i] for i in order]), color=RANDOM, linewidth=0.8, alpha=0.6,
                label="random directions" if k == 0 else None)
    if random_effects:
        half = [max(abs(effects[i]) for effects in random_effects) for i in order]
        ax.fill_between(xs, [unsteered - h for h in half], [unsteered + h for h in half], color=RANDOM, alpha=0.25,
                        linewidth=0, label="largest random effect")
    for k, (name, (reward, reward_ci)) in enumerate(directions.items()):
        ys = [reward[i] for i in order]
        yerr = None
        if reward_ci is not None:
            yerr = [[max(ys[j] - reward_ci[i][0], 0) for j, i in enumerate(order)],
                    [max(reward_ci[i][1] - ys[j], 0) for j, i in enumerate(order)]]
        ax.errorbar(xs, ys, yerr=yerr, fmt="-o", color=POST if k == 0 else f"C{k + 1}", capsize=3,
                    label=f"{name} direction")
    ax.set(xlabel="steering strength α (× typical activation norm)", ylabel="true reward (mean, 95% CI)")
    ax.set_title(f"Steering dose-response at {site}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return to_data_uri(fig)


def divergent_by_alpha(
    alphas: Sequence[float], reward: Sequence[float | None], fluency: Sequence[float | None] | None,
    fluency_label: str = "grammatical rate",
) -> str:
    """True reward (and a fluency measure, right axis: the grammatical rate, or a perplexity) of amplified
    samples against alpha."""
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    ax.plot(alphas, _finite(reward), "-o", color=POST, label="true reward")
    ax.set(xlabel="amplification α (0 = post model)", ylabel="true reward (mean)", title="Divergent sampling")
    ax.grid(alpha=0.3)
    if fluency is not None:
        ax2 = ax.twinx()
        ax2.plot(alphas, _finite(fluency), "--s", color=BASE, label=fluency_label)
        ax2.set(ylabel=fluency_label)
        if fluency_label == "grammatical rate":
            ax2.set(ylim=(-0.05, 1.05))
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


def param_divergence(labels: Sequence[str], tensor_norm_sum: Sequence[float], relative_change: Sequence[float],
                     title: str) -> str:
    """The parameter change base -> post per layer, two bar panels: the sum of the per-tensor L2 norms
    of the change (the ranking measure of the 2023 SAE paper) and the relative change
    ||θ_post − θ_base|| / ||θ_base||."""
    fig = Figure(figsize=(max(6.0, 0.5 * len(labels) + 4), 3.5), layout="constrained")
    ax_sum, ax_rel = fig.subplots(1, 2)
    for ax, values, color, ylabel, panel in (
            (ax_sum, tensor_norm_sum, POST, "sum of per-tensor L2 norms", "Sum of tensor norms"),
            (ax_rel, relative_change, BASE, "‖θ_post − θ_base‖ / ‖θ_base‖", "Relative change")):
        ax.bar(range(len(labels)), values, color=color)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, fontsize=8)
        ax.set(xlabel="layer", ylabel=ylabel, title=panel)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    return to_data_uri(fig)


def value_probes(table: Sequence[Mapping[str, Any]]) -> str:
    """Value probes (`value.probes`, the `table` of value_probe.json): one panel per target (V or F of
    a model), test Spearman with its 95% CI against the position class (last prompt token, then
    completion offsets) for the best probe on each model's activations and for the strongest text-only
    baseline (chosen on validation, shown for the post row)."""
    targets = list(dict.fromkeys(r["target"] for r in table))
    positions = list(dict.fromkeys(str(r["position"]) for r in table))
    fig = Figure(figsize=(3.2 * len(targets), 3.4), layout="constrained")
    axes = fig.subplots(1, len(targets), squeeze=False, sharey=True)[0]
    series = (("post", "probe, post acts", POST, "spearman"), ("base", "probe, base acts", BASE, "spearman"),
              ("post", "strongest text baseline", RANDOM, None))
    for ax, target in zip(axes, targets):
        for k, (acts, label, color, key) in enumerate(series):
            rows = {str(r["position"]): r for r in table if r["target"] == target and r["acts"] == acts}
            xs, ys, err = [], [], [[], []]
            for i, position in enumerate(positions):
                r = rows.get(position)
                est = (r or {}).get(key) if key else (r["baselines"][r["strongest_baseline"]]["spearman"]
                                                      if r and r.get("strongest_baseline") else None)
                if est is None or est["value"] is None or not math.isfinite(est["value"]):  # NaN: JSON null
                    continue
                xs.append(i + (k - 1) * 0.15)
                ys.append(est["value"])
                err[0].append(max(est["value"] - est["ci"][0], 0))
                err[1].append(max(est["ci"][1] - est["value"], 0))
            if xs:
                ax.errorbar(xs, ys, yerr=err, fmt="o", color=color, capsize=3, label=label, markersize=4)
        ax.set_xticks(range(len(positions)), positions, rotation=30, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set(title=target, xlabel="prefix ends at")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Spearman with Monte Carlo target (95% CI)")
    axes[0].legend(loc="best", fontsize=7)
    return to_data_uri(fig)


def value_traces(traces: Sequence[Mapping[str, Any]], max_records: int = 6) -> str:
    """V along completions (`value.probes` traces): per held-out record (the first `max_records`), the
    Monte Carlo V_post with +-1.96 se against the number of completion tokens written (0 = the last
    prompt token), the best V probe's prediction at each position and the PPO value head's where given."""
    by_record: dict[int, list[Mapping[str, Any]]] = {}
    for t in traces:
        if t["position"] != "last_prompt":
            by_record.setdefault(int(t["record"]), []).append(t)
    at_prompt = {t["prompt_id"]: t for t in traces if t["position"] == "last_prompt"}  # shared by its records
    for pts in by_record.values():
        if pts[0]["prompt_id"] in at_prompt:
            pts.append(at_prompt[pts[0]["prompt_id"]])
    records = sorted(by_record)[:max_records]
    cols = min(3, max(len(records), 1))
    rows_ = max(1, math.ceil(len(records) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows_), layout="constrained")
    axes = fig.subplots(rows_, cols, squeeze=False, sharey=True)
    for ax in axes.flat[len(records):]:
        ax.set_visible(False)
    for ax, record in zip(axes.flat, records):
        pts = sorted(by_record[record], key=lambda t: t["n_written"])
        xs = [t["n_written"] for t in pts]
        se = [1.96 * (t["value_se"] or 0.0) for t in pts]
        ax.errorbar(xs, [t["value"] for t in pts], yerr=se, fmt="o-", color="black", capsize=3, markersize=4,
                    label="Monte Carlo V")
        ax.plot(xs, [t["probe"] for t in pts], "s--", color=POST, markersize=4, label="V probe")
        if all(t.get("head") is not None for t in pts):
            ax.plot(xs, [t["head"] for t in pts], "^:", color=BASE, markersize=4, label="value head")
        ax.set(title=f"record {record}", xlabel="completion tokens written")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("V (true reward)")
    axes[0][0].legend(loc="best", fontsize=7)
    return to_data_uri(fig)


def estimate_label(value: float | None, ci: Sequence[float] | None) -> str:
    """A cell's annotation: the value over its 95% CI, two decimals; "n/a" when undefined."""
    if value is None or not math.isfinite(value):
        return "n/a"
    lo, hi = ci if ci is not None else (math.nan, math.nan)
    bounds = f"[{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "[n/a]"
    return f"{value:.2f}\n{bounds}"


def score_heatmap(rows: Sequence[str], columns: Sequence[tuple[str, float]],
                  cells: Sequence[Sequence[tuple[float, tuple[float, float]] | None]], title: str) -> str:
    """Rows (methods) x columns, each column its own score with its chance level: `columns` =
    (label, chance), a score whose best is 1 and whose scale is symmetric about chance (an AUROC or an
    accuracy: chance 0.5 on 0..1; a correlation: chance 0 on -1..1). `cells[i][j]` = (value, 95% CI) or
    None. Each cell is coloured by (value - chance) / (1 - chance), so -1..1 on every column with white
    at chance, and annotated with its value and CI; a missing or undefined cell is blank, "n/a"."""
    grid = [[math.nan if c is None else (_finite([c[0]])[0] - chance) / (1 - chance)
             for c, (_, chance) in zip(row, columns)] for row in cells]
    fig = Figure(figsize=(2.0 + 1.45 * len(columns), 1.3 + 0.55 * len(rows)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
    ax.set_xticks(range(len(columns)), [f"{label}\n(chance {chance:g})" for label, chance in columns], fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("organism: the score that applies to its truth (95% CI)")
    ax.set_ylabel("method")
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            ax.text(j, i, estimate_label(*(c or (None, None))), ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8, label="(score − chance) / (1 − chance)")
    ax.set_title(title, fontsize=10)
    return to_data_uri(fig)
