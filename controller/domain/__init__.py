"""The domain: plain Python, no I/O, time injected. Queue, matching and scheduling decisions."""
