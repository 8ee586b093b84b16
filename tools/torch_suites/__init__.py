"""The parts of ``tools/torch_suite.py``: the suites (``catalog``) and the two-framework comparison (``compare``)."""
