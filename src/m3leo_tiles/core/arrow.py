"""How we ask Arrow to read CSV: parsed on the calling thread, off Arrow's CPU thread pool.

Arrow's CSV reader hands blocks to its global thread pool by default. A short-lived process
(a CLI command, a cron job's `status`) that used the pool can abort at exit with
"terminate called without an active exception" (SIGABRT, exit -6) when the pool's threads
are torn down after the interpreter (apache/arrow#34314; seen once here on `status
--verify` after its output was printed). Our CSV reads are one manifest or one splits file:
single-threaded, a 400k-row manifest's three columns take ~45 ms either way on 2 cores, so
the pool buys nothing. (Arrow's IO pool still starts one reader thread for any read: fewer
threads at exit, not none.)
"""

from __future__ import annotations

import pyarrow.csv as pacsv


def single_threaded_csv() -> pacsv.ReadOptions:
    """Arrow CSV read options that keep the work on the calling thread."""
    return pacsv.ReadOptions(use_threads=False)
