"""The worker: what runs one attempt of a job (``joblife worker run JOB_ID``)."""
