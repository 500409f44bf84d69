"""`python -m trainer train --config X ...` (the form torchrun runs); same as `pretrain train ...`."""

import sys

from trainer.cli import main

sys.exit(main())
