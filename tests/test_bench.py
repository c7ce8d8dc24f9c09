"""bench/run_all.py's bookkeeping on fake benchmark output (no benchmark runs here): per-round ratios,
medians, peak RSS per side, targets, the JSON rows, --only merging and the kept notes of BENCHMARKS.md."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


@pytest.fixture(scope="module")
def run_all():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def side(name, throughput, rss, **extra):
    return {"side": name, "scale": "tiny", "throughput": throughput, "unit": "tokens/s", "seconds": 1.0,
            "peak_rss_mb": rss, "threads": 1, "model": "m", **extra}


def test_rows_hold_per_round_ratios_their_median_and_each_sides_peak_rss(run_all):
    rounds = [{"rewardlab": side("rewardlab", 300.0, 500.0, fvu=0.10, dead_fraction=0.5),
               "saelens": side("saelens", 100.0, 700.0, fvu=0.12, dead_fraction=0.8)},
              {"rewardlab": side("rewardlab", 200.0, 520.0, fvu=0.11, dead_fraction=0.4),
               "saelens": side("saelens", 100.0, 650.0, fvu=0.13, dead_fraction=0.7)},
              {"rewardlab": side("rewardlab", 500.0, 510.0, fvu=0.09, dead_fraction=0.6),
               "saelens": side("saelens", 125.0, 690.0, fvu=0.12, dead_fraction=0.9)}]
    (row,) = run_all.build_rows("sae", "tiny", rounds, "python bench/sae_throughput.py", "2026-12-01")
    assert row["runs"] == [3.0, 2.0, 4.0]
    assert row["median_ratio"] == 3.0
    assert row["peak_rss_mb"] == {"rewardlab": 520.0, "peer": 700.0}
    assert row["throughput"] == {"rewardlab": 300.0, "peer": 100.0}
    assert row["fvu"] == {"rewardlab": 0.10, "peer": 0.12}
    assert row["dead_fraction"] == {"rewardlab": 0.5, "peer": 0.8}
    assert row["fvu_runs"] == {"rewardlab": [0.10, 0.11, 0.09], "peer": [0.12, 0.13, 0.12]}
    assert "FVU 0.1000 vs 0.1200, dead latents 0.50 vs 0.80" in run_all.table_line(row)
    assert row["met"] is True  # 3.0 >= 3, less memory, lower FVU
    rounds[0]["rewardlab"]["peak_rss_mb"] = 800.0
    assert run_all.build_rows("sae", "tiny", rounds, "c", "d")[0]["met"] is False  # more memory than the peer
    rounds[0]["rewardlab"]["peak_rss_mb"] = 500.0
    for r, ours in zip(rounds, (0.120004, 0.130004, 0.120004)):
        r["rewardlab"]["fvu"] = ours  # equal medians at 4 decimals, rewardlab's higher
    row = run_all.build_rows("sae", "tiny", rounds, "c", "d")[0]
    assert row["fvu"] == {"rewardlab": 0.12, "peer": 0.12} and row["met"] is False


def test_one_row_per_peer_with_the_check_difference(run_all):
    sides = run_all.BENCHMARKS["acts"]["sides"]
    rounds = [{s: side(s, 100.0 * (i + 1) if s == "rewardlab" else 50.0, 400.0, check=[1.0, 2.0 + 1e-4 * (s != "rewardlab")])
               for s in sides} for i in range(2)]
    rows = run_all.build_rows("acts", "135m", rounds, "c", "d")
    assert [r["peer"] for r in rows] == sides[1:]
    assert all(r["runs"] == [2.0, 4.0] and r["median_ratio"] == 3.0 for r in rows)
    assert all(r["check_max_rel_diff"] == pytest.approx(1e-4 / 2.0001) for r in rows)
    assert all(r["met"] is True for r in rows)  # 3.0 >= 3 at equal memory


def test_alternating_order(run_all):
    sides = ["rewardlab", "a", "b"]
    assert run_all.side_order(sides, 0) == sides
    assert run_all.side_order(sides, 1) == ["b", "a", "rewardlab"]


def test_json_rows_merge_and_the_markdown_keeps_the_notes(run_all, tmp_path):
    def row(bench, scale, peer, ratio):
        r = {"benchmark": bench, "scale": scale, "peer": peer, "median_ratio": ratio, "runs": [ratio],
             "peak_rss_mb": {"rewardlab": 1.0, "peer": 2.0}, "throughput": {"rewardlab": 2.0, "peer": 1.0},
             "unit": "samples/s", "target": 2.0, "met": ratio >= 2, "command": "c", "measured": "d"}
        return r

    old = [row("sae", "tiny", "saelens", 1.0), row("ppo", "tiny", "trl_rloo", 1.0), row("ppo", "135m", "trl_rloo", 1.5)]
    new = [row("ppo", "tiny", "trl_grpo", 2.5), row("ppo", "tiny", "trl_rloo", 2.0)]
    rows = run_all.merge_rows(old, new)
    assert [(r["benchmark"], r["scale"], r["peer"], r["median_ratio"]) for r in rows] == [
        ("ppo", "tiny", "trl_rloo", 2.0), ("ppo", "tiny", "trl_grpo", 2.5), ("ppo", "135m", "trl_rloo", 1.5),
        ("sae", "tiny", "saelens", 1.0)]
    for r in json.loads(json.dumps(rows)):
        assert {"benchmark", "scale", "peer", "median_ratio", "runs", "peak_rss_mb"} <= set(r)
        assert r["benchmark"] in ("ppo", "score", "acts", "sae")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nold table\n\n## Where the time goes\n\nnotes\n")
    text = run_all.render(rows, ["# Benchmarks"], run_all.kept_tail(doc))
    assert "old table" not in text and text.endswith("## Where the time goes\n\nnotes\n")
    assert "| ppo | tiny | TRL GRPOTrainer | **2.50x** |" in text
    assert text.count("**not met**") == 2  # the 1.0x and 1.5x rows
    doc.write_text(text)
    assert run_all.kept_tail(doc) == "\n## Where the time goes\n\nnotes\n"  # stable across regenerations


def value_round(seconds, prefixes=256, k=16):
    n = 2 * prefixes * k
    return {"rewardlab": side("rewardlab", n / seconds, 600.0 + seconds, seconds=seconds, unit="continuations/s",
                              prefixes=prefixes, models=2, k=k, continuations=n)}


def test_the_sae_benchmark_trains_round_i_with_seed_i(run_all, monkeypatch):
    commands = []

    def fake_side(command):
        commands.append(command)
        name = command[command.index("--side") + 1]
        return side(name, 100.0, 500.0, fvu=0.1, dead_fraction=0.5)

    monkeypatch.setattr(run_all, "run_side", fake_side)
    (row,) = run_all.measure("sae", "tiny", "W", repeats=2, threads=1)
    seeds = [(c[c.index("--seed") + 1], c[-1]) for c in commands if "--seed" in c]
    assert seeds == [("0", "rewardlab"), ("0", "saelens"), ("1", "saelens"), ("1", "rewardlab")]
    assert "--seed" not in commands[0] and commands[0][-1] == "prepare"
    assert ["--lr", "1.7e-2", "--peer-lr", "6e-3"] == commands[1][commands[1].index("--lr"):commands[1].index("--lr") + 4]
    assert row["command"].endswith("--seed ROUND --side SIDE")


def test_the_value_benchmark_has_one_row_without_a_peer(run_all):
    rounds = [value_round(50.0), value_round(40.0), value_round(45.0)]
    (row,) = run_all.build_rows("value", "tiny", rounds, "python bench/value_targets.py", "2026-12-01")
    assert row["peer"] == "none" and row["runs"] == [50.0, 40.0, 45.0] and row["median_seconds"] == 45.0
    assert row["throughput"] == {"rewardlab": round(8192 / 45.0, 2)} and row["unit"] == "continuations/s"
    assert row["peak_rss_mb"] == {"rewardlab": 650.0} and row["target_seconds"] == 180
    assert row["workload"] == {"prefixes": 256, "k": 16, "models": 2} and row["met"] is True
    slow = [value_round(200.0), value_round(170.0), value_round(190.0)]
    assert run_all.build_rows("value", "tiny", slow, "c", "d")[0]["met"] is False  # median 190 s > 180 s
    small = [value_round(5.0, prefixes=64, k=4)]
    assert run_all.build_rows("value", "tiny", small, "c", "d")[0]["met"] is False  # not the target's workload
    old = [{"benchmark": "sae", "scale": "tiny", "peer": "saelens", "median_ratio": 3.5, "runs": [3.5],
            "peak_rss_mb": {"rewardlab": 1.0, "peer": 2.0}, "throughput": {"rewardlab": 2.0, "peer": 1.0},
            "unit": "tokens/s", "target": 3.0, "met": True, "command": "c", "measured": "d"}]
    rows = run_all.merge_rows(old, [row])
    assert [r["benchmark"] for r in rows] == ["sae", "value"]
    text = run_all.render(rows, ["# Benchmarks"], "")
    assert ("| value | tiny | none | **45.0 s** | 50.0, 40.0, 45.0 s | 182.0 continuations/s | 650 | "
            "256 prefixes x 2 models at K=16 under 3 minutes: met |") in text


def test_the_value_script_speaks_the_protocol(run_all, fast_demo, tmp_path):
    """prepare, then the timed side at a toy size on the fast demo's world; its line makes a row."""
    from rewardlab.io import read_jsonl
    from rewardlab.world import load_world

    records = tmp_path / "records.jsonl"
    args = ["bench/value_targets.py", "--world", str(fast_demo / "world"), "--records", str(records),
            "--prefixes", "8", "--k", "2", "--scale", "tiny", "--threads", "1"]
    prep = run_all.run_side([*args, "--side", "prepare"])
    n_prompts = len(load_world(fast_demo / "world").prompts)  # 32 in the micro world
    assert prep["side"] == "prepare" and prep["n_records"] == min(128, n_prompts) == len(read_jsonl(records))
    assert run_all.run_side([*args, "--side", "prepare"])["n_records"] is None  # existing records are kept
    line = run_all.run_side([*args, "--side", "rewardlab"])
    assert (line["prefixes"], line["k"], line["models"], line["continuations"]) == (8, 2, 2, 32)
    assert line["throughput"] == pytest.approx(32 / line["seconds"]) and line["peak_rss_mb"] > 0
    (row,) = run_all.build_rows("value", "tiny", [{"rewardlab": line}], "c", "d")
    assert row["workload"] == {"prefixes": 8, "k": 2, "models": 2} and row["met"] is False


def test_the_header_names_versions_that_kept_rows_were_measured_with(run_all, monkeypatch):
    now = {"torch": "2.13.0", "trl": "1.16.0"}
    rows = [{"measured": "2026-12-01", "versions": {"torch": "2.13.0", "nnsight": "0.8.1"}},
            {"measured": "2026-11-30", "versions": {"nnsight": "0.8.1", "trl": "1.15.0"}},
            {"measured": "2026-12-02", "versions": dict(now)},
            {"measured": "2026-11-01"}]  # a row from before versions were kept
    assert run_all.versions_line(now, rows) == (
        "torch 2.13.0, trl 1.16.0"
        "; nnsight 0.8.1 in the rows measured with it (2026-11-30, 2026-12-01; not installed for this regeneration)"
        "; trl 1.15.0 in the rows measured with it (2026-11-30; 1.16.0 now)")
    assert run_all.versions_line(now, rows[2:]) == "torch 2.13.0, trl 1.16.0"
    monkeypatch.setattr(run_all, "versions", lambda: now)
    header = "\n".join(run_all.header_lines(1, "idle", rows))
    assert "nnsight 0.8.1 in the rows measured with it" in header
