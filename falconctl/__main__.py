import sys

from falconctl.cli import main

sys.exit(main())
