"""Run distributed test files over every combination of backend, world size and init method; see --help.

    python tools/run_distributed_tests.py test/example_allreduce.py --world-size 2 3 --init-method file env
"""

import sys

from distributed_testing._matrix import main

if __name__ == "__main__":
    sys.exit(main())
