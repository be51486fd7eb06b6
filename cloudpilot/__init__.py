"""cloudpilot for Python scripts: `from cloudpilot.client import Client`."""
