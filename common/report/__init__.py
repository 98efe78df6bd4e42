"""The report: what a reader looks at after the steps ran. `python -m common.report` (summary.py is the command).

Its modules read the steps' results (ladder.py, reproduce.py) and traces (nsys_trace.py, intervals.py) and draw
them (plots.py). They import from `common/`; nothing in `common/` imports from here: the steps never need it.
"""
