"""The data path: the chunker, the deduplicator and the ingest that fills a shadow table exactly
as its locked config says.
"""

from registry.extras import require

# Every way into the data path (ingest, reconcile --source, the demo) imports this package
# first: one line naming the extra, instead of a traceback from the chunker's numpy import.
require("numpy", "chunking a corpus")
