"""The notebook here is driven by tests/test_browser.py in a real JupyterLab, never collected by nbval
(it needs the environment that test sets up)."""

collect_ignore_glob = ["*.ipynb"]
