"""What the messages look like on the broker: exchange, routing keys, headers, properties.

All of it comes from the settings (``amqp_exchange``, ``amqp_exchange_type``,
``amqp_routing_key_template``); the routing key is computed when a message is published.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any

from joblife.config import Settings
from joblife.errors import ConfigurationError

#: Placeholders a routing-key template may use.
ROUTING_KEY_FIELDS = ("job_type", "product", "input_product_type", "tile_id")
CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Topology:
    """The exchange the product messages go to and how their routing keys are made."""

    exchange: str
    exchange_type: str = "topic"
    routing_key_template: str = "{job_type}.{product}"
    declare: bool = True

    def __post_init__(self) -> None:
        """Refuse a routing-key template that could not make a key (ConfigurationError):
        bad syntax, unknown placeholders, a conversion or format specification that
        fails."""
        known = ", ".join(f"{{{name}}}" for name in ROUTING_KEY_FIELDS)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.routing_key_template)]
        except ValueError as exc:
            raise ConfigurationError(
                f"amqp_routing_key_template {self.routing_key_template!r}: {exc} "
                f"(placeholders: {known})"
            ) from None
        unknown = sorted({f for f in fields if f is not None} - set(ROUTING_KEY_FIELDS))
        if unknown:
            raise ConfigurationError(
                f"amqp_routing_key_template {self.routing_key_template!r} uses unknown "
                f"placeholders {', '.join(f'{{{name}}}' for name in unknown)} (known: {known})"
            )
        try:  # a conversion or format spec is only checked when a key is made
            self.routing_key("job_type", "product")
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ConfigurationError(
                f"amqp_routing_key_template {self.routing_key_template!r} cannot make a "
                f"routing key: {exc} (placeholders: {known}, without conversions or format "
                "specifications)"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        """The topology the settings describe (ConfigurationError if the template is bad)."""
        return cls(
            exchange=settings.amqp_exchange,
            exchange_type=settings.amqp_exchange_type,
            routing_key_template=settings.amqp_routing_key_template,
            declare=settings.amqp_declare_topology,
        )

    def routing_key(
        self,
        job_type: str,
        product: str,
        input_product_type: str | None = None,
        tile_id: str | None = None,
    ) -> str:
        """The routing key of one product's message (a missing value becomes ``none``)."""
        values = {
            "job_type": job_type,
            "product": product,
            "input_product_type": input_product_type or "none",
            "tile_id": tile_id or "none",
        }
        return self.routing_key_template.format_map(values)


def message_headers(job_type: str, job_id: int, product: str, attempt: int) -> dict[str, Any]:
    """The AMQP headers of a product message: what a consumer filters or logs on."""
    return {"job_type": job_type, "job_id": job_id, "product": product, "attempt": attempt}


def encode_body(body: Any) -> bytes:
    """The message body: the product's publication JSON, UTF-8."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
