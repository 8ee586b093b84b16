"""``python -m distributed_testing``: see distributed_testing._cli."""

import sys

from distributed_testing._cli import main

if __name__ == "__main__":
    sys.exit(main())
