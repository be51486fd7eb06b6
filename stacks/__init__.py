"""Pulumi programs for cloudpilot's cloud endpoints: one per cloud kind, each an importable
program function (the controller passes it to the Automation API as an inline program) that
`__main__.py` also runs for the `pulumi` CLI."""
