import sys

from sdparity.cli import main

sys.exit(main())
