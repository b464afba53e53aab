"""The wire between sender, receiver and readers: bytes <-> typed values.

Messages and their codec (``protocol``), frames as readers get them (``frames``),
and compression (``compression``). Nothing here opens a socket, touches LMDB or
starts a thread; everything above builds on it.
"""
