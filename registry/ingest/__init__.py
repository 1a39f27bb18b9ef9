"""The data path: the chunker, the deduplicator and the ingest that fills a shadow table exactly
as its locked config says.
"""
