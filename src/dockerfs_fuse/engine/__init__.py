"""Per-engine policy: listings, events, re-reads, spools. No FUSE."""
