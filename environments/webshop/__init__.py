"""WebShop (Yao et al. 2022) as a text environment: real data files, text-mode pages, BM25 search,
the published reward, a generator of catalogs in the real file format, and a goal-reading oracle.

Modules: ``data`` (loading rules, goals, splits), ``search`` (``SEARCH_BACKENDS``: bm25, lucene),
``reward`` (``get_reward``), ``env`` (``WebShopEnv``), ``generator`` (``generate``). Nothing heavy is
imported here.
"""
