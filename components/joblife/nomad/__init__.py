"""joblife on Nomad: the job specs and client configurations (:mod:`joblife.nomad.specs`),
their HCL rendering (:mod:`joblife.nomad.hcl`), the python-nomad client joblife configures
(:mod:`joblife.nomad.client`) and deployment through the API (:mod:`joblife.nomad.deploy`).

Not to be confused with python-nomad's top-level ``nomad`` package, which this one uses.
"""
