import sys

from meshwarden.cli import main

sys.exit(main())
