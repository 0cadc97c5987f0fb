"""efficientdl: fast, faithful, tested AdaShare, Knowledge Evolution and TSSL-BP."""

__version__ = "0.1.0"
