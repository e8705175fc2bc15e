import sys

from lamina.server.cli import main

sys.exit(main())
