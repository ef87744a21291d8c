"""Named channels over many sockets and many processes: the Broadcaster, its wire
format and its backends (in-process and Redis).

It builds on the server side; import its public names from :mod:`trio_wsmgr`
and :mod:`trio_wsmgr.backends`.
"""
