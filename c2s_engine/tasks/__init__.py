"""Analysis tasks in scanpy style: each takes an AnnData and a model, writes results under
documented keys and records provenance in ``uns['c2s'][<task>]``."""
