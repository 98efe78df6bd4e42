"""`python -m common.report`: the summary, the ladder chart and the timelines (common/report/summary.py)."""
from common import cli
from common.report import summary

cli.run(summary.main)
