"""Layer 4, the client side: connect, bulk enqueue, batches, results as DataFrames, the sync twin, and
the monitor that owns refresh loops, rates and actions for every face. Draws nothing.
"""
