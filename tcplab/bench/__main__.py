"""
C{python -m tcplab.bench}: the same as C{tcplab bench}.
"""

import sys

from tcplab.bench.command import main

sys.exit(main())
