"""The pyfuse3 adapter: turns kernel requests into model and engine calls."""
