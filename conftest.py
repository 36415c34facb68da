"""
Puts the project root on C{sys.path} before any test imports Twisted's plugin
package, so plugin discovery finds C{twisted/plugins/tcplab_plugin.py} from the
source tree even under a default (import-hook) editable install.
"""

# tests/external/ is a suite as another project would write it: tests/test_external.py
# runs it from a temporary folder, against the installed pytest plugin.
collect_ignore = ["tests/external"]
