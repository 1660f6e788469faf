import sys

from genserve.cli import main

sys.exit(main())
