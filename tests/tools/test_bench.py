"""tools/bench.py end to end on the CPU: the model suite's smoke run (profiled), its JSON and its
chart."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(*args: str) -> None:
    """Run tools/bench.py in a fresh process, as its users do."""
    result = subprocess.run(
        [sys.executable, "tools/bench.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # axes, bars and labels, not an empty canvas


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    bench("--suite", "model", "--smoke", "--profile", "--out", str(out))
    return out


@pytest.mark.slow
def test_model_smoke_writes_rows_and_chart(smoke_dir: Path):
    payload = json.loads((smoke_dir / "bench_model.json").read_text())
    assert payload["suite"] == "model" and payload["env"]["torch"]
    rows = payload["rows"]
    for layers in {row["layers"] for row in rows}:
        by_variant = {row["variant"]: row for row in rows if row["layers"] == layers}
        peft, ours = by_variant["PEFT"], by_variant["lk-patch"]
        assert peft["tokens_per_s"] > 0 and ours["tokens_per_s"] > 0
        # The first loss comes before any optimizer step: the same model computed two ways
        # (bf16 on the CPU).
        assert math.isclose(ours["loss"], peft["loss"], rel_tol=1e-3)
    assert_png(smoke_dir / "bench_model.png")


@pytest.mark.slow
def test_model_smoke_profiles_each_variant(smoke_dir: Path):
    """``--profile``: each row holds one more step's largest ops (CPU ops on the CPU) with
    their calls and ms; ours runs its Functions, PEFT does not."""
    rows = json.loads((smoke_dir / "bench_model.json").read_text())["rows"]
    for row in rows:
        kernels = row["kernels"]
        assert kernels and all(calls > 0 and ms >= 0 for calls, ms in kernels.values())
        assert sum(ms for _, ms in kernels.values()) > 0
        ours = any(name.startswith("LoRA_") for name in kernels)
        assert ours == (row["variant"] == "lk-patch"), (row["variant"], list(kernels))


@pytest.mark.slow
def test_chart_rerenders_from_json(smoke_dir: Path, tmp_path: Path):
    copy = tmp_path / "bench_model.json"
    shutil.copy(smoke_dir / "bench_model.json", copy)
    bench("--chart", str(copy))
    assert_png(tmp_path / "bench_model.png")


def test_median_rows_takes_each_runs_own_ratio():
    """--repeat: per block, the median of the per-run ratios (each to its own run's floor) and
    of the times; the other fields from the first run."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench import median_rows

    def row(block: str, floor: float, ours: float) -> dict:
        return {"block": block, "floor_ms": floor, "ours_ms": ours, "ours_x": ours / floor,
                "ours_held_mib": 512.0}  # fmt: skip

    runs = [[row("mlp", 8.0, 9.6), row("o", 1.0, 1.5)],
            [row("mlp", 8.8, 9.7), row("o", 0.8, 1.0)],
            [row("mlp", 8.2, 9.0), row("o", 0.9, 1.4)]]  # fmt: skip
    mlp, o = median_rows(runs)
    assert mlp["runs"] == o["runs"] == 3
    assert mlp["ours_x_runs"] == [r[0]["ours_x"] for r in runs]
    assert mlp["ours_x"] == sorted(r[0]["ours_x"] for r in runs)[1]
    assert o["floor_ms"] == 0.9 and o["ours_ms"] == 1.4
    assert o["ours_x"] == 1.5  # the runs' ratios 1.5, 1.25, 1.56; not 1.4 / 0.9
    assert mlp["ours_held_mib"] == 512.0


def test_micro_table_names_each_implementation_once():
    """The graph figures (``ours_graph_x``) and a failed capture or peer are columns of their
    implementation, not implementations of their own."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench import impls_in, micro_cell

    row = {"block": "o", "floor_ms": 0.8, "floor_graph_ms": 0.78, "max_rel_err": 1e-3,
           "ours_ms": 1.2, "ours_x": 1.5, "ours_graph_ms": 0.82, "ours_graph_x": 1.05,
           "ours_held_mib": 64.0, "ours_peak_mib": 128.0,
           "axolotl_ms": 1.0, "axolotl_x": 1.25, "axolotl_graph_failure": "RuntimeError()",
           "axolotl_held_mib": 64.0, "axolotl_peak_mib": 130.0,
           "unsloth_error": "TypeError('no')"}  # fmt: skip
    assert impls_in([row]) == ["ours", "axolotl", "unsloth"]
    assert micro_cell(row, "ours") == "1.50x g1.05x 64/128"
    assert micro_cell(row, "axolotl") == "1.25x g- 64/130"
    assert micro_cell(row, "unsloth") == "TypeError('no')"
