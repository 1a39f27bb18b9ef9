"""The database side: connections and the embedded server, and the bookkeeping schema
(`chunk_registry`) that records what the registry created and did.
"""
