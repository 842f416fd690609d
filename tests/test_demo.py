"""The README's main command (`chargemesh demo`) on a private embedded stack, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chargemesh.infra.config import Settings

pytestmark = pytest.mark.integration
DEMO_TIMEOUT_S = 300
CHARGEMESH = str(Path(sys.executable).parent / "chargemesh")  # the console script


def test_the_main_command_settles_a_marketplace_and_shuts_down(
        new_stack_settings: Callable[[], Settings]) -> None:
    settings = new_stack_settings()
    env = dict(os.environ, **settings.as_environ())
    done = subprocess.run([CHARGEMESH, "demo"], env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    # Two jurisdictions settled (DE-BY is roaming under reciprocity), read back from ClickHouse.
    assert "DE-BY" in out and "EUR" in out and "US-CA" in out and "USD" in out
    assert "FINAL" in out and "ENERGY_REPRICED" in out
    status = subprocess.run([CHARGEMESH, "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 1, "the demo shut its stack down"
