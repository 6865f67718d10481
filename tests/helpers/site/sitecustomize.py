"""Loaded by every Python process of a CLI test (PYTHONPATH): registers the test adapters.

The CLI subprocess and the dask workers it spawns all import this, so recipes naming
``fake-synthetic`` or ``slow-raster`` load in the driver and unpickle on the workers, while
the code under test stays unchanged.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for `helpers`

try:
    import helpers.fake_sources  # noqa: F401
except Exception as error:  # never break an unrelated interpreter start
    print(f"test sitecustomize: {error}", file=sys.stderr)
