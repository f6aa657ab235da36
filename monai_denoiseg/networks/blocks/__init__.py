"""Network blocks: the Instance-aware Embedding Module (IEM)."""

from .iem import IEM_MODES, InstanceAwareEmbedding
