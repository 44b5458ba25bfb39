"""One-to-one, per-frame matching of localizations to ground-truth emitters (SPEC §7).

Two localizations can only be paired when they are in the same frame and at most
``tolerance_nm`` apart (the boundary is included). Each truth emitter and each
localization is used at most once. Two methods are offered:

``"hungarian"`` (default)
    Optimal assignment. Among all valid one-to-one matchings it returns one with the
    **largest number of pairs** and, among those, the **smallest total distance**
    (the rule of the SMLM challenge and of DECODE's evaluation). It is what
    :func:`scipy.optimize.linear_sum_assignment` computes when every forbidden pair gets
    a finite cost larger than the sum of all allowed distances.
``"greedy"``
    DECODE-style greedy: all candidate pairs are sorted by distance (ties broken by
    truth row, then localization row) and a pair is accepted when neither side is
    used yet. Fast and simple, but it may return fewer pairs than the optimum.

Both methods work on the sparse graph of candidate pairs found with a k-d tree, so
evaluating 10^5–10^6 localizations takes seconds: the frame index is used as a
third coordinate spaced further apart than the tolerance, so one tree query finds the
candidates of every frame at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from stormfold.errors import UserError
from stormfold.table import check_length_nm, validate_table

METHODS = ("hungarian", "greedy")

#: Connected components of the candidate graph with more truth × localization entries
#: than this are solved with the sparse solver instead of a dense cost matrix.
DENSE_LIMIT = 4_000_000

#: After this many vectorised rounds of the greedy matcher, the few remaining
#: candidate pairs are finished by a plain sequential loop (same result).
_GREEDY_MAX_ROUNDS = 64


@dataclass(frozen=True)
class Matching:
    """The result of :func:`match`: matched pairs as row numbers of the two tables.

    Attributes
    ----------
    truth_index, locs_index : numpy.ndarray of int64, shape (n_pairs,)
        Positional row numbers (``iloc``, not index labels) into the ground-truth and
        localization tables. Sorted by ``truth_index``.
    distance_nm : numpy.ndarray of float64
        Lateral distance of each pair, in nm (≤ ``tolerance_nm``).
    dx_nm, dy_nm : numpy.ndarray of float64
        Localization minus truth, in nm.
    n_truth, n_locs : int
        Number of rows of the two tables that took part in the matching.
    tolerance_nm : float
        Largest allowed distance, in nm.
    method : str
        ``"hungarian"`` or ``"greedy"``.
    """

    truth_index: np.ndarray
    locs_index: np.ndarray
    distance_nm: np.ndarray
    dx_nm: np.ndarray
    dy_nm: np.ndarray
    n_truth: int
    n_locs: int
    tolerance_nm: float
    method: str = field(default="hungarian")

    @property
    def tp(self) -> int:
        """True positives: number of matched pairs."""
        return int(len(self.truth_index))

    @property
    def fp(self) -> int:
        """False positives: localizations without a partner."""
        return self.n_locs - self.tp

    @property
    def fn(self) -> int:
        """False negatives: truth emitters without a partner."""
        return self.n_truth - self.tp

    def __len__(self) -> int:
        return self.tp


# --------------------------------------------------------------------------- helpers
def check_tolerance(tolerance_nm: float) -> float:
    """Return ``tolerance_nm`` as a float; :class:`UserError` unless finite and ≥ 0."""
    return check_length_nm(tolerance_nm, "tolerance", allow_zero=True)


def check_method(method: str) -> str:
    """Return ``method``; :class:`UserError` unless it is ``hungarian`` or ``greedy``."""
    if method not in METHODS:
        raise UserError(f"unknown matching method {method!r} (use {' or '.join(METHODS)})")
    return method


def table_arrays(table: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(frame, x_nm, y_nm)`` arrays of a localization table."""
    table = validate_table(table, source)
    return (table["frame"].to_numpy(np.int64), table["x_nm"].to_numpy(np.float64),
            table["y_nm"].to_numpy(np.float64))


def candidate_pairs(truth_fxy: tuple[np.ndarray, np.ndarray, np.ndarray],
                    locs_fxy: tuple[np.ndarray, np.ndarray, np.ndarray],
                    tolerance_nm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (truth, localization) pairs in the same frame at most ``tolerance_nm`` apart.

    Parameters
    ----------
    truth_fxy, locs_fxy : tuple of arrays
        ``(frame, x_nm, y_nm)`` of each set; frames are integers, positions in nm.
    tolerance_nm : float
        Largest distance of a candidate pair, in nm (inclusive).

    Returns
    -------
    ti, li : numpy.ndarray of int64
        Row numbers of the pairs in the two sets.
    d : numpy.ndarray of float64
        Distances of the pairs in nm, recomputed exactly as ``hypot(dx, dy)``.
    """
    tf, tx, ty = truth_fxy
    lf, lx, ly = locs_fxy
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if len(tx) == 0 or len(lx) == 0:
        return empty
    # frames become a third coordinate, spaced further apart than the tolerance: pairs
    # from different frames are never within reach, same-frame pairs have dz = 0 exactly.
    spacing = 2.0 * tolerance_nm + 1.0
    t_tree = cKDTree(np.column_stack([tx, ty, tf.astype(np.float64) * spacing]))
    l_tree = cKDTree(np.column_stack([lx, ly, lf.astype(np.float64) * spacing]))
    reach = tolerance_nm * (1.0 + 1e-9) + 1e-9   # the exact test is below
    pairs = t_tree.sparse_distance_matrix(l_tree, reach, output_type="ndarray")
    if len(pairs) == 0:
        return empty
    ti = pairs["i"].astype(np.int64)
    li = pairs["j"].astype(np.int64)
    keep = tf[ti] == lf[li]
    ti, li = ti[keep], li[keep]
    d = np.hypot(lx[li] - tx[ti], ly[li] - ty[ti])
    keep = d <= tolerance_nm
    return ti[keep], li[keep], d[keep]


def _sorted_edges(ti: np.ndarray, li: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Order of the edges by distance, then truth row, then localization row."""
    return np.lexsort((li, ti, d))


# --------------------------------------------------------------------------- greedy
def greedy_pairs(ti: np.ndarray, li: np.ndarray, d: np.ndarray,
                 n_truth: int, n_locs: int) -> np.ndarray:
    """Greedy one-to-one matching on candidate edges: closest pairs first.

    Equivalent to scanning the edges sorted by ``(d, ti, li)`` and accepting an edge
    when neither end is used yet. Vectorised: in each round every edge that is the
    first remaining edge of both its ends is accepted (such edges are exactly the ones
    the sequential scan accepts next), then the edges touching used nodes are removed.

    Parameters
    ----------
    ti, li : numpy.ndarray of int
        End points of the candidate edges (rows of the two sets).
    d : numpy.ndarray of float
        Edge lengths (any unit).
    n_truth, n_locs : int
        Sizes of the two sets.

    Returns
    -------
    numpy.ndarray of int64
        Indices of the accepted edges into ``ti``/``li``/``d``.
    """
    order = _sorted_edges(ti, li, d)
    t, l = ti[order], li[order]
    used_t = np.zeros(n_truth, bool)
    used_l = np.zeros(n_locs, bool)
    alive = np.arange(len(order))
    accepted: list[np.ndarray] = []
    rounds = 0
    while len(alive):
        if rounds >= _GREEDY_MAX_ROUNDS:       # long chains: finish sequentially
            rest = []
            for e in alive.tolist():
                a, b = t[e], l[e]
                if not used_t[a] and not used_l[b]:
                    used_t[a] = used_l[b] = True
                    rest.append(e)
            accepted.append(np.asarray(rest, np.int64))
            break
        at, al = t[alive], l[alive]
        first_t = np.zeros(len(alive), bool)
        first_t[np.unique(at, return_index=True)[1]] = True
        first_l = np.zeros(len(alive), bool)
        first_l[np.unique(al, return_index=True)[1]] = True
        take = alive[first_t & first_l]
        accepted.append(take)
        used_t[t[take]] = True
        used_l[l[take]] = True
        alive = alive[~(used_t[at] | used_l[al])]
        rounds += 1
    chosen = np.concatenate(accepted) if accepted else np.zeros(0, np.int64)
    return order[chosen].astype(np.int64)


# --------------------------------------------------------------------------- optimal
def _sparse_assignment(a: np.ndarray, b: np.ndarray, d: np.ndarray, n_a: int, n_b: int,
                       big: float) -> np.ndarray:
    """Max-cardinality, then min-distance matching on a sparse bipartite graph.

    Every node gets a private dummy partner at cost ``big`` and dummy nodes are linked
    wherever the real nodes are, so a full matching always exists; with ``big`` larger
    than the sum of any matching's distances, the optimum matches as many real pairs as
    possible. Returns the indices of the chosen real edges.
    """
    m = len(a)
    ar_a, ar_b = np.arange(n_a), np.arange(n_b)
    # rows: real a (n_a) then dummy b (n_b); columns: real b (n_b) then dummy a (n_a)
    rows = np.concatenate([a, ar_a, n_a + ar_b, n_a + b])
    cols = np.concatenate([b, n_b + ar_a, ar_b, n_b + a])
    # +1 on every edge: a full matching always has n_a + n_b edges, so the shift does not
    # change the optimum, and it keeps zero distances as explicit (non-zero) weights.
    weights = np.concatenate([d + 1.0, np.full(n_a + n_b, big + 1.0), np.ones(m)])
    size = n_a + n_b
    graph = coo_matrix((weights, (rows, cols)), shape=(size, size)).tocsr()
    r, c = min_weight_full_bipartite_matching(graph)
    real = (r < n_a) & (c < n_b)
    edge_id = coo_matrix((np.arange(1, m + 1), (a, b)), shape=(n_a, n_b)).tocsr()
    return np.asarray(edge_id[r[real], c[real]]).ravel().astype(np.int64) - 1


def optimal_pairs(ti: np.ndarray, li: np.ndarray, d: np.ndarray,
                  n_truth: int, n_locs: int, tolerance: float) -> np.ndarray:
    """Optimal one-to-one matching on candidate edges (max pairs, then min total distance).

    The candidate graph is split into connected components. Components with a single
    truth or a single localization are solved in bulk (the shortest edge); the others
    with :func:`scipy.optimize.linear_sum_assignment` on a small dense matrix in which
    forbidden pairs cost more than the sum of all allowed distances, or — for very
    large components — with :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`.

    Parameters
    ----------
    ti, li : numpy.ndarray of int
        End points of the candidate edges (rows of the two sets); no duplicates.
    d : numpy.ndarray of float
        Edge lengths, all ≤ ``tolerance``.
    n_truth, n_locs : int
        Sizes of the two sets.
    tolerance : float
        Largest edge length (bounds the forbidden-pair cost).

    Returns
    -------
    numpy.ndarray of int64
        Indices of the accepted edges into ``ti``/``li``/``d``.
    """
    m = len(ti)
    if m == 0:
        return np.zeros(0, np.int64)
    ut, a = np.unique(ti, return_inverse=True)
    ul, b = np.unique(li, return_inverse=True)
    n_a, n_b = len(ut), len(ul)
    adjacency = coo_matrix((np.ones(m, np.int8), (a, n_a + b)), shape=(n_a + n_b,) * 2)
    n_comp, labels = connected_components(adjacency, directed=False)
    comp = labels[a]
    cnt_a = np.bincount(labels[:n_a], minlength=n_comp)
    cnt_b = np.bincount(labels[n_a:], minlength=n_comp)

    chosen: list[np.ndarray] = []
    # components with one node on either side: keep the shortest edge of each
    star = (cnt_a[comp] == 1) | (cnt_b[comp] == 1)
    if star.any():
        idx = np.flatnonzero(star)
        idx = idx[np.lexsort((li[idx], ti[idx], d[idx], comp[idx]))]
        first = np.ones(len(idx), bool)
        first[1:] = comp[idx][1:] != comp[idx][:-1]
        chosen.append(idx[first])

    hard = np.flatnonzero(~star)
    if len(hard):
        # local (within-component) indices of the nodes
        loc_a = _rank_within(labels[:n_a], n_comp)
        loc_b = _rank_within(labels[n_a:], n_comp)
        hard = hard[np.argsort(comp[hard], kind="stable")]
        hc = comp[hard]
        bounds = np.flatnonzero(np.diff(hc)) + 1
        for edges in np.split(hard, bounds):
            c = comp[edges[0]]
            na, nb = int(cnt_a[c]), int(cnt_b[c])
            ea, eb, ed = loc_a[a[edges]], loc_b[b[edges]], d[edges]
            big = tolerance * (min(na, nb) + 1) + 1.0
            if na * nb <= DENSE_LIMIT:
                cost = np.full((na, nb), big)
                cost[ea, eb] = ed
                r, col = linear_sum_assignment(cost)
                ok = cost[r, col] < big
                lookup = np.full((na, nb), -1, np.int64)
                lookup[ea, eb] = edges
                chosen.append(lookup[r[ok], col[ok]])
            else:
                chosen.append(edges[_sparse_assignment(ea, eb, ed, na, nb, big)])
    return np.concatenate(chosen).astype(np.int64)


def _rank_within(labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Position of each element within its group (groups given by ``labels``)."""
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_groups))[:-1]])
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(labels)) - starts[labels[order]]
    return rank


# --------------------------------------------------------------------------- public
def match_arrays(truth_fxy: tuple[np.ndarray, np.ndarray, np.ndarray],
                 locs_fxy: tuple[np.ndarray, np.ndarray, np.ndarray],
                 tolerance_nm: float, method: str = "hungarian",
                 candidates: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                 ) -> Matching:
    """:func:`match` on ``(frame, x_nm, y_nm)`` arrays.

    ``candidates`` may hold the output of :func:`candidate_pairs` for a tolerance at
    least as large as ``tolerance_nm`` (it is filtered), to share one k-d tree query
    between several tolerances.
    """
    tol = check_tolerance(tolerance_nm)
    method = check_method(method)
    n_t, n_l = len(truth_fxy[0]), len(locs_fxy[0])
    if candidates is None:
        ti, li, d = candidate_pairs(truth_fxy, locs_fxy, tol)
    else:
        ti, li, d = candidates
        keep = d <= tol
        ti, li, d = ti[keep], li[keep], d[keep]
    if method == "greedy":
        sel = greedy_pairs(ti, li, d, n_t, n_l)
    else:
        sel = optimal_pairs(ti, li, d, n_t, n_l, tol)
    ti, li = ti[sel], li[sel]
    order = np.argsort(ti, kind="stable")
    ti, li = ti[order], li[order]
    dx = locs_fxy[1][li] - truth_fxy[1][ti]
    dy = locs_fxy[2][li] - truth_fxy[2][ti]
    return Matching(truth_index=ti, locs_index=li, distance_nm=np.hypot(dx, dy),
                    dx_nm=dx, dy_nm=dy, n_truth=n_t, n_locs=n_l, tolerance_nm=tol,
                    method=method)


def match(truth: pd.DataFrame, locs: pd.DataFrame, tolerance_nm: float,
          method: str = "hungarian") -> Matching:
    """Match localizations to ground truth, per frame and one-to-one.

    Parameters
    ----------
    truth : pandas.DataFrame
        Ground-truth table (``frame``, ``x_nm``, ``y_nm``; SPEC §1).
    locs : pandas.DataFrame
        Localization table (same columns).
    tolerance_nm : float
        Largest distance of a valid pair, in nm (a pair at exactly this distance is
        allowed).
    method : {"hungarian", "greedy"}
        ``"hungarian"``: the maximum number of pairs and, among such matchings, the
        smallest sum of distances. ``"greedy"``: closest pairs first (DECODE); may
        return fewer pairs.

    Returns
    -------
    Matching
        Row numbers of the pairs and their offsets (localization − truth) in nm.

    Raises
    ------
    UserError
        When a table lacks a required column, or the tolerance or method is invalid.
    """
    return match_arrays(table_arrays(truth, "ground truth"), table_arrays(locs, "localizations"),
                        tolerance_nm, method)
