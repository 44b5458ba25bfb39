"""``python -m stormfold``: the same as the ``stormfold`` command."""
import sys

from stormfold.cli import main

sys.exit(main())
