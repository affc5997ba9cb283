"""Talking to Docker: the only subpackage that imports aiodocker."""
