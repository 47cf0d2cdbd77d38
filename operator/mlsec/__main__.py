import sys

from mlsec.cli import main

sys.exit(main())
