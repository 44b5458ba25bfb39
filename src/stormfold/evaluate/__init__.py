"""Evaluation against ground truth (SPEC §7).

- :func:`match` / :class:`Matching` — per-frame one-to-one matching (optimal or greedy);
- :func:`evaluate` / :func:`format_table` — TP/FP/FN, Jaccard, precision, recall, F1,
  RMSE, bias and efficiency at several tolerances;
- :func:`pixel_jaccard` — the paper-style Jaccard index on the fine grid;
- :func:`psnr`, :func:`ssim`, :func:`nrmse` — image metrics;
- :func:`joint_crlb` / :func:`matched_rmse_floor` / :func:`floor_table` — the joint
  Cramér–Rao bound of a simulated movie and the scores an unbiased estimator reaching it
  would get.
"""
from stormfold.evaluate.bounds import floor_table, joint_crlb, matched_rmse_floor
from stormfold.evaluate.images import nrmse, psnr, ssim
from stormfold.evaluate.matching import Matching, match
from stormfold.evaluate.metrics import evaluate, format_table
from stormfold.evaluate.pixel_jaccard import PixelJaccard, pixel_jaccard

__all__ = ["match", "Matching", "evaluate", "format_table", "pixel_jaccard", "PixelJaccard",
           "psnr", "ssim", "nrmse", "joint_crlb", "matched_rmse_floor", "floor_table"]
