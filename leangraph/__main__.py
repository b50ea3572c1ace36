import sys

from leangraph.cli import main

sys.exit(main())
