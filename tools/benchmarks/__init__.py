"""The speed benchmarks behind ``tools/bench.py``: PyTorch's distributed test classes and ours, side by side.

``runner`` runs one generated file or command, isolated and measured; ``tables``
writes the figures. The trivial table: ``trivial_files`` (rows and the file each
run generates), ``trivial_runs`` (running it and its targets), ``trivial_report``
(its tables and README section). The other scenarios: ``scenarios`` (their
registry), ``scenario_files`` (their generated files), ``outcomes`` (each test's
outcome), ``figures`` (their figures and report lines), ``scenario_ddp`` (ddp,
dtensor, pytest) and ``scenario_overhead`` (whole-file, memory). ``cli`` is the
command line.
"""
