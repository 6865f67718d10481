"""Loaded by every Python process of a CLI test (PYTHONPATH): registers the test adapters.

The CLI subprocess and the dask workers it spawns all import this, so recipes naming
``fake-synthetic`` or ``slow-raster`` load in the driver and unpickle on the workers, while
the code under test stays unchanged. With ``M3LEO_TEST_ASF_LOOPBACK=URL`` set, every
asf-search session of the process is routed to that loopback server (helpers.asf_loopback).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for `helpers`

try:
    import helpers.fake_sources
except Exception as error:  # never break an unrelated interpreter start
    print(f"test sitecustomize: {error}", file=sys.stderr)

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
