"""Methods the benchmarks try and no command uses yet: CMA-ES over a few schedule knots, importance-label fitting.

Installed with the package, but their extra dependencies are not: `pip install 'ftp-deploy[research]'`.
A method that earns its place in `train` moves into ftp_deploy/training and its dependency into
the requirements.
"""
