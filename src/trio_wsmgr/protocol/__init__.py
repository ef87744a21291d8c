"""The wire, sans-IO: frames, outgoing messages, permessage-deflate.

The bottom layer: it imports nothing above it and does no I/O.
"""
