"""dupwatch: a watch-folder daemon that keeps a photo library free of duplicates."""

__version__ = "0.1.0"
