"""`python -m eval run|watch|export|report|make-tasks ...`; same as `pretrain eval ...`."""

import sys

from eval.cli import main

sys.exit(main())
