"""The 9P shim: serves a directory over 9P2000, 9P2000.u and 9P2000.L.

codec/       pure bytes <-> messages (wire records, spec strings, a table per dialect)
server       listeners, accept, what all connections share
connection   one client: frames, tags, flush, ordered replies, backpressure
session      what a handler sees: dialect, msize, fids, shares
handlers/    one small handler per request (fids, io, attrs)
export       a directory as 9P files
resources    threads, reply bytes and descriptors, and their caps
cli, child   dial strings and signals; starting the shim from dockerfs-fuse
"""
