"""The reconciler: a pure planner over the committed state and the database's actual state,
the reader of that actual state, the applier of a plan, the run loop and the renderings.
"""
