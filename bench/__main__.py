"""`python -m bench [--quick] [--shapes ...] [--dtypes ...] [--cases ...]`: see lmgen.benchmark."""

import logging
import sys

from lmgen.benchmark import main

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
sys.exit(main())
