"""
C{python -m tcplab}: the same as the C{tcplab} command.
"""

import sys

from tcplab.cli import main

sys.exit(main())
