"""``python -m grit.cli`` (as torchrun and accelerate start it): the `grit` command."""

import sys

from grit.cli import main

sys.exit(main())
