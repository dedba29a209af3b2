"""The ``joblife`` command: the operator's view of the job database.

``joblife status`` (job type x status counts), ``joblife jobs list|show`` (read),
``joblife jobs retry|cancel|check`` (status changes through the one door) and
``joblife db upgrade|url|current|stop``. The entry point is :func:`joblife.cli.main.main`;
every read command takes ``--json``.
"""
