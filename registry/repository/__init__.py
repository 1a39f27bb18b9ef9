"""The registry repository side: the git layer, the committed state and its parse cache,
validation, and the lifecycle changes (lock, tag, promote, retire, rollback) with history,
trust (signatures) and the GitHub client. Nothing here opens a database connection.
"""
