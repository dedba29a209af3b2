"""joblife: the job lifecycle system for product-processing chains.

Every input product discovered on external storage becomes a job row in PostgreSQL that
walks a fixed life cycle of 16 statuses (see :mod:`joblife.model.status`). Partners add a
processing chain by subclassing :class:`joblife.model.JobTemplate`.
"""

__version__ = "0.1.0"
