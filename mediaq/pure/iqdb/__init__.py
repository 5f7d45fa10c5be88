"""IQDB signatures, hashes and scoring, bit-compatible with the danbooru/iqdb server (DESIGN.md section 4):
:mod:`~mediaq.pure.iqdb.signature` (the data and its hash), :mod:`~mediaq.pure.iqdb.compute` (image to
signature), :mod:`~mediaq.pure.iqdb.scoring` (an in-memory index with the server's scoring)."""
