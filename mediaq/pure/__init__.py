"""Layer 1, pure computation: image decoding and rendering, IQDB signatures and scoring, rating math.

Nothing here imports arq, redis, SQLAlchemy or ipywidgets (a test imports each module alone and
checks), so it runs anywhere: in a worker's process pool, in a notebook, in another program.
"""
