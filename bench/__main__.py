"""`python -m bench [--quick] [--shapes ...] [--out FILE] [--json FILE] ...`: bench.benchmark."""

import logging
import sys

from bench.benchmark import main

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
sys.exit(main())
