"""dockerfs-fuse: Docker containers as files, over FUSE and 9P."""

__version__ = "0.1.0"
