"""The fault matrix behind ``tools/fault_matrix.py``: faults x modes, run in real processes.

``cases`` holds the faults and the test file each mode runs; ``modes`` how each mode is
launched; ``cells`` runs one (fault, mode) cell, times its report and judges it;
``catalogue`` runs the one-shot faults of ``test/test_faults.py``; ``table`` prints
Markdown; ``cli`` is the command line.
"""
