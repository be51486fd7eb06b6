"""The Pulumi program for the `pulumi` CLI (Pulumi.yaml: `main: stacks/`): the stack's
`cloudpilot:cloud` config says which cloud's program runs. The controller runs the same
program functions inline through the Automation API."""

import os
import sys

import pulumi

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

cloud = pulumi.Config("cloudpilot").require("cloud")
if cloud == "aws":
    from stacks.aws import program
elif cloud == "openstack":
    from stacks.openstack import program
elif cloud == "local":
    from stacks.local import program
else:
    raise ValueError(f"cloudpilot:cloud must be aws, openstack or local, not {cloud!r}")
program()
