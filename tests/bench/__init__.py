"""The benchmark harness: syncd side by side with aws s3 sync, rclone and s5cmd, in the same run.

Not part of the test suite (pytest does not collect tests/bench). Entry point:
``python -m tests.bench.run``; see tests/bench/README.md.
"""
