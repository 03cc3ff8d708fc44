"""The benchmark harness: Infinite Descent and its peers run, counted and timed alike.

Separate from the solver: it uses only the public API (``import infinite_descent as idn``),
and ``import infinite_descent`` never imports it. Shared by ``benchmarks/`` and the notebooks.

- `infinite_descent.bench.peers`: optimistix, optax and scipy runs measured alike
  (needs the ``benchmarks`` extra: ``pip install "infinite_descent[benchmarks]"``).
- `infinite_descent.bench.reproduction`: the paper's Table 1 and Figure 1 beside the
  peers (``benchmarks`` extra).
- `infinite_descent.bench.timing`: the time of one exact step against ``N`` and ``M``.
- `infinite_descent.bench.starts`: starts drawn around a model as ``idn.multistart``
  draws them.

Import the module you need (``from infinite_descent.bench import peers``); this package does
not import them all, so a timing run does not load scipy or matplotlib (whose memory
``benchmarks/scaling.py`` would count).
"""
