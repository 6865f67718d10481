"""Loaded by every Python process of a CLI test (PYTHONPATH): makes ``helpers`` importable.

The test adapters (``fake-synthetic``, ``slow-raster``...) are declared by the entry points of
``m3leo_tiles_test_sources-0.dist-info`` beside this file, as a third party's sources are;
they live in ``helpers.fake_sources``, so the CLI subprocess and the dask workers it spawns
can load them by name and unpickle them, while the code under test stays unchanged.
With ``M3LEO_TEST_ASF_LOOPBACK=URL`` set, every asf-search session of the process is routed
to that loopback server (helpers.asf_loopback).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for `helpers`

if os.environ.get("M3LEO_TEST_ASF_LOOPBACK"):
    try:
        import helpers.asf_loopback

        helpers.asf_loopback.install_from_environment()
    except Exception as error:
        print(f"test sitecustomize: {error}", file=sys.stderr)

if os.environ.get("M3LEO_TEST_EE_ATTEMPTS"):  # an outage test need not wait out the backoff
    try:
        from m3leo_tiles.core.retry import RetryPolicy
        from m3leo_tiles.sources.earthengine import EarthEngineSource

        attempts = int(os.environ["M3LEO_TEST_EE_ATTEMPTS"])
        EarthEngineSource.retry_policy = RetryPolicy(attempts=attempts, base_delay_s=0.1)
    except Exception as error:
        print(f"test sitecustomize: {error}", file=sys.stderr)
