"""`python -m tokenizer train|encode|inspect ...` (the form `ray job submit` runs).

Same as `pretrain tokenizer ...`.
"""

import sys

from tokenizer.cli import main

sys.exit(main())
