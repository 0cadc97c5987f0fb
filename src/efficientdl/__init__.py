"""efficientdl: fast, faithful, tested implementations of AdaShare, Knowledge Evolution and TSSL-BP."""

__version__ = "0.1.0"
