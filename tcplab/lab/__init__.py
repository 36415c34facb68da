"""
The lab: every experiment of the lesson, run live on 127.0.0.1 with
C{tcplab lab NAME}, in English or Chinese.
"""

from tcplab.lab.record import Experiment, Record, Unavailable
from tcplab.lab.runner import EXPERIMENTS, LabOptions, exitCode, runExperiment, runLab
from tcplab.lab.texts import LANGUAGES, Text

__all__ = [
    "EXPERIMENTS",
    "LANGUAGES",
    "Experiment",
    "LabOptions",
    "Record",
    "Text",
    "Unavailable",
    "exitCode",
    "runExperiment",
    "runLab",
]
