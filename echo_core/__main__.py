import sys

from echo_core.cli.main import main

sys.exit(main())
