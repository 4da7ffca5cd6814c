import sys

from vlmsam.cli.main import main

sys.exit(main())
