import sys

from statsfeeder.cli import main

sys.exit(main())
