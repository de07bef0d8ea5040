"""The registry: bases, concepts and renders in a database, concept files in a content store."""

from perfusion_hub.registry.records import (
    BaseRecord,
    ConceptRecord,
    ConceptSummary,
    RenderRecord,
    VerifyReport,
)
from perfusion_hub.registry.registry import Registry

__all__ = ["BaseRecord", "ConceptRecord", "ConceptSummary", "Registry", "RenderRecord",
           "VerifyReport"]
