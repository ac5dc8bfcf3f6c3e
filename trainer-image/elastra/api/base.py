"""The two kinds of wire model every contract in `elastra.api` is built from.

Both are camelCase on the wire, frozen, and take field docstrings as descriptions (the CRD generator
reads them). They differ only in what an unknown key means:
- `SpecModel`: written by people (specs): an unknown key is rejected, so that typos are reported.
- `StatusModel`: written by another component (status, reports): an unknown key is ignored, so an
  older reader understands a newer writer.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """camelCase, frozen; unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class StatusModel(BaseModel):
    """camelCase, frozen; unknown keys ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )
