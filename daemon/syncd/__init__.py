"""syncd: keep S3 prefixes an exact, live mirror of local folders."""

__version__ = "0.1.0"
