import sys

from fit3d.cli import main

sys.exit(main())
