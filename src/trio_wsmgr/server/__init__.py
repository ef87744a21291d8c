"""The server side: the manager, admission and auth, the managed socket, heartbeats,
the buffered transport and fan-out.

It builds on :mod:`trio_wsmgr.protocol`; import its public names from :mod:`trio_wsmgr`.
"""
