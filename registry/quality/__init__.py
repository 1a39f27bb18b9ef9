"""Quality: retrieval evaluation and the promotion gate, health computed from the data, the
post-promotion watch, and the dashboard.
"""
