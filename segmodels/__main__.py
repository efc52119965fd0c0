import sys

from segmodels.cli import main

sys.exit(main())
