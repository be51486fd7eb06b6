"""The discrete-event replay: a workload trace through the real scheduler (engine.py), the
policies it compares (policies.py), what it reports (report.py, plots.py), and the
`cloudpilot simulate` command (run.py)."""
