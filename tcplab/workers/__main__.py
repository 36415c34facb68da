import sys

from tcplab.workers.worker import main

main(sys.argv)
