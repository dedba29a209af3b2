"""An API-faithful test double of Nomad's HTTP API (tests only, never the product): the
endpoints joblife uses, with Nomad's validation and answers, a client that runs each
dispatched child's task as a local process, and fault modes (500s, slow answers,
refused connections, garbage collection right after the end, lost allocations)."""

from tests.nomad_double.cluster import Cluster, Faults
from tests.nomad_double.server import NomadDouble

__all__ = ["Cluster", "Faults", "NomadDouble"]
