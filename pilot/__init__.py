"""The cloudpilot pilot: a small agent that runs on a machine, asks the controller for jobs that
fit the machine (late binding), runs them, heartbeats, uploads output and reports.

Standard library only: it is installed on every machine and must not import the controller."""

__version__ = "0.1.0"
