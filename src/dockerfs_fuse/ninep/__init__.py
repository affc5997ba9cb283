"""The 9P shim: serves a directory over 9P2000, 9P2000.u and 9P2000.L.

codec (pure bytes ⇄ messages) │ export (a directory as 9P files) │ server (trio:
connections, tags, fids) │ cli (dial strings, signals).
"""
