"""Layer 5, the faces: the ``mediaq`` command, the ipywidgets dashboard, display helpers and progress
bars. They draw; nothing below imports them.
"""
