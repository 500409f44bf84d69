"""`python -m data_pipeline ...` (the form `ray job submit` runs); same as `pretrain data ...`."""

import sys

from data_pipeline.cli import main

sys.exit(main())
