import sys

from edgedispatch.cli import main

sys.exit(main())
