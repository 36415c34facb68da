"""
tcplab's tests.  Hypothesis keeps its files (example database, constants
cache) in a temporary folder: a test run leaves nothing in the work tree,
under trial as under pytest, both of which import this package first.
"""

import atexit
import shutil
import tempfile

from hypothesis.configuration import set_hypothesis_home_dir

_home = tempfile.mkdtemp(prefix="tcplab-hypothesis-")
atexit.register(shutil.rmtree, _home, ignore_errors=True)
set_hypothesis_home_dir(_home)
