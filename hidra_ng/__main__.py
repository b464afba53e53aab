import sys

from hidra_ng.cli import main

sys.exit(main())
