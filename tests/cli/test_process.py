"""What a command's process sets up before any work: Arrow's allocator (cli.common)."""

from __future__ import annotations

import os
import subprocess
import sys

ALLOCATOR_OF_A_COMMAND = """
import sys
import m3leo_tiles.cli.tiles  # the console entry's module: pyarrow must not be loaded yet
assert "pyarrow" not in sys.modules, "the CLI imports pyarrow before run_app can choose its pool"
from m3leo_tiles.cli.common import prefer_system_allocator
prefer_system_allocator()
import pyarrow
print(pyarrow.default_memory_pool().backend_name)
"""


def _backend(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", ALLOCATOR_OF_A_COMMAND], env=env,
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return done.stdout.strip()


def test_a_command_uses_the_system_allocator_unless_the_user_chose_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _backend(env) == "system"
    assert _backend({**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == "mimalloc"
