"""Tools namespace (scanpy-style ``c2s.tl``): cell sentences and their reverse transform.

- :func:`sentences`: rank genes per cell into ``obsm['c2s_ranks']``.
- :func:`fit_reverse`: fit expression ~ log10(1 + rank) into ``uns['c2s']['reverse']``.
- :func:`reconstruct`: expression AnnData from any list of sentences.
"""

from c2s_engine.reverse import fit_reverse, reconstruct
from c2s_engine.sentences import compute_sentences as sentences

__all__ = ["fit_reverse", "reconstruct", "sentences"]
