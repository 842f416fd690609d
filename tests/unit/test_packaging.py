"""The wheel carries the data files the code loads at run time (SQL migrations, Avro schemas)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEEL_BUILD_TIMEOUT_S = 300


def _build_wheel(out_dir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out_dir), "."],
        cwd=REPO_ROOT,
        check=True,
        timeout=WHEEL_BUILD_TIMEOUT_S,
    )
    wheels = list(out_dir.glob("chargemesh-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_migrations_and_avro_schemas(tmp_path: Path) -> None:
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())

    assert "chargemesh/sinks/migrations/0001_events.sql" in names
    shipped = {p.name for p in (REPO_ROOT / "sinks" / "migrations").glob("*.sql")}
    assert {f"chargemesh/sinks/migrations/{n}" for n in shipped} <= names

    in_tree = sorted((REPO_ROOT / "schemas" / "avro").glob("*.avsc"))
    if in_tree:
        assert {f"chargemesh/schemas/avro/{p.name}" for p in in_tree} <= names
    else:  # no schema written yet: at least the wheel must be set up to carry them
        with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
            package_data = tomllib.load(handle)["tool"]["setuptools"]["package-data"]
        assert "avro/*.avsc" in package_data["chargemesh.schemas"]
