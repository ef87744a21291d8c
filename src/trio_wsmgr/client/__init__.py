"""The client side: the connection pool, its synchronous core and health.

It builds on :mod:`trio_wsmgr.protocol`; import its public names from :mod:`trio_wsmgr`.
"""
