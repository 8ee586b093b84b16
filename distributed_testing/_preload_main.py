"""Imported last by the fork server: the test file run as ``__main__``, then ``gc.freeze()``.

multiprocessing's own ``set_forkserver_preload(["__main__"])`` never passes
the main path to the server (CPython 3.11 looks for a key its preparation
data does not have), so every rank would import the test file again, and
whatever it imports. The parent names the file in an environment variable.
"""

from __future__ import annotations

import gc
import os
import sys
from multiprocessing import process, spawn

MAIN_PATH_VARIABLE = "DISTRIBUTED_TESTING_MAIN_PATH"

_path = os.environ.get(MAIN_PATH_VARIABLE)
if _path and getattr(sys.modules["__main__"], "__file__", None) != _path:
    process.current_process()._inheriting = True  # type: ignore[attr-defined]
    try:
        spawn.import_main_path(_path)
    finally:
        del process.current_process()._inheriting  # type: ignore[attr-defined]

# Everything imported so far lives as long as the server: keep the collector
# off it, so ranks neither pause to scan torch's objects nor copy their pages.
gc.freeze()
